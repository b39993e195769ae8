"""One trainer module per task; each exposes ``train(cfg, ctx, *, resume=False) -> Path | None``."""
