"""Stage 4, what people look at: ``figures`` and ``tables`` (the notebooks show them) and the
run's self-contained HTML ``report``."""
__all__ = ["config", "figures", "tables", "report"]
