"""The homepage: the orchestrator (``service``), the page types, the rank step, cold start and
the popularity fallback."""
