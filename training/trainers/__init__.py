"""One trainer module per task; each exposes ``fit(cfg, ctx, *, resume=False)``, which returns the
trained model on rank 0 (None elsewhere); ``training.run`` exports it."""
