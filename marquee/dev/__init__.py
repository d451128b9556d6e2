"""Development tools that are not part of the production path (the TF Serving stand-in)."""
