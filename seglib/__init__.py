"""seglib: semantic segmentation of street scenes, notebook first.

One module per pipeline stage: ``datasets`` (where pairs come from), ``pairs`` (read side-by-side
pairs, split them into train/val/test), ``palette`` (the K-Means palette), ``labels`` (mask colours
to class ids and back), ``quality`` (label purity), ``prepare`` (the prepared dataset), ``layout``
and ``fsutil`` (file names, safe writes), ``synthetic`` (generated street scenes), ``model``,
``data`` and ``train`` (U-Net training), ``evaluate`` and ``metrics``, ``export`` (TFLite),
``predict``, ``figures``, ``tables`` and ``report`` (what notebooks and reports show),
``notebooks`` and ``batch`` (papermill runs), ``colab`` (the notebooks' Colab set-up).
Heavy dependencies (TensorFlow) are imported only by the stages that need them.
"""
__version__ = "0.1.0"
