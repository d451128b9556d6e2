"""Write paths: validate, log durably, apply to state (events, titles, signups, onboarding)."""
