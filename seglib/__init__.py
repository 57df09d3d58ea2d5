"""seglib: semantic segmentation of street scenes, notebook first.

One module per pipeline stage: ``pairs`` (read side-by-side pairs), ``labels`` (K-Means
palette), ``prepare`` (write the prepared dataset), ``synthetic`` (generated street scenes).
Heavy dependencies (TensorFlow) are imported only by the stages that need them.
"""
__version__ = "0.1.0"
