"""The HTTP API: the FastAPI app (routes, bodies, errors), its metrics and its server."""
