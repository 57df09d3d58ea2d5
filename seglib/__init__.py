"""seglib: semantic segmentation of street scenes, notebook first.

The subpackages are the pipeline's stages, in the order data flows; each imports only from the
stages before it (``tests/test_layers.py`` holds it, ``docs/development.md`` draws it):

- ``layout``, ``fsutil``, ``quiet``: every file name seglib reads or writes; safe, staged writes;
  TensorFlow's C++ start-up lines kept off the terminal.
- ``data``: pairs and id masks in, the K-Means palette, class ids, a prepared dataset out.
- ``training``: the model, its losses, metrics and callbacks, the training loop, tf.distribute.
- ``inference``: a trained run used: evaluated, exported (TFLite, ONNX), predicted, served.
- ``reporting``: what people look at: figures, tables, the run's HTML report.
- ``runs``: many runs: the notebooks through papermill, batches (sweeps), Colab, the demo.
- ``cli``: ``python -m seglib COMMAND``, on top of all of them.

Heavy dependencies (TensorFlow) are imported only by the functions that need them.
"""
__version__ = "0.1.0"

from seglib import quiet  # noqa: E402

quiet.install()
