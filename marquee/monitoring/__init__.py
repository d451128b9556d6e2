"""Monitoring: data drift and train/serve skew, embedding drift, exposure and diversity."""
