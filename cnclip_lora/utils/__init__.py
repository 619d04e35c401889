"""Small shared utilities: atomic files and checkpoints, caches, distributed helpers, model-source
checks and the logging set-up. Nothing here imports torch at module import."""
