"""Stage 5, many runs: the notebooks executed with papermill (``notebooks``), a batch's sweep file
(``sweep``), one run of it (``runner``), the batch here, in processes or on Ray (``batch``), its
comparison page (``index``), the Colab set-up (``colab``) and the ``demo``."""
__all__ = ["notebooks", "sweep", "runner", "index", "batch", "colab", "demo"]
