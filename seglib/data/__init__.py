"""Stage 1, the data: where pairs come from (``datasets``, ``synthetic``), reading them (``pairs``)
or labelled images (``idmasks``, ``cityscapes``), mask colours to class ids (``palette``, ``labels``),
classes merged and dropped (``classmap``), the prepared dataset (``reading``, ``prepare``) and
reading it back (``splits``); ``quality`` scores the labels against true ids."""
__all__ = ["config", "datasets", "synthetic", "pairs", "cityscapes", "idmasks", "palette", "labels", "classmap",
           "reading", "prepare", "splits", "quality"]
