"""ScannIndexer: a ScaNN index over the catalogue, evaluated against exact search and blessed.

``index_lib`` holds the plain functions (build, evaluate, bless, save, load); ``component`` and
``executor`` are the thin TFX layer around them.
"""
