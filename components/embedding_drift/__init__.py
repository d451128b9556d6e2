"""EmbeddingDrift: the thin TFX layer over ``marquee.monitoring.embedding_drift``."""
