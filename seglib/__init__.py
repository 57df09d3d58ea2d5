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

The public API, one name per step, each loaded on first use (``import seglib`` stays light)::

    from seglib import PrepareConfig, prepare_dataset, TrainConfig, train, EvaluateConfig, evaluate, export_run
    from seglib import write_run_report, predict_paths, serve, run_batch

    summary = prepare_dataset(PrepareConfig("data/synthetic", "data/prepared/default", synth_count=200))
    run = train(TrainConfig("data/prepared/default", "artifacts/first", epochs=5, encoder_weights="none"))
    metrics = evaluate(run.run_dir)                 # on the data the run was trained on
    exported = export_run(run.run_dir, "int8")      # model_int8.tflite with its agreement and latency
    report = write_run_report(run.run_dir)          # reports/first/report.html
"""
__version__ = "0.1.0"

# name -> the module that defines it: the public face; everything else is reached through the stages.
_API = {
    "PrepareConfig": "seglib.data.config", "prepare_dataset": "seglib.data.prepare",
    "TrainConfig": "seglib.training.config", "train": "seglib.training.train", "load_model": "seglib.training.train",
    "EvaluateConfig": "seglib.inference.config", "evaluate": "seglib.inference.evaluate",
    "export_run": "seglib.inference.export", "predict_paths": "seglib.inference.predict",
    "predict_video": "seglib.inference.predict", "serve": "seglib.inference.serve",
    "ReportConfig": "seglib.reporting.config", "ShowConfig": "seglib.reporting.config",
    "write_run_report": "seglib.reporting.report", "run_batch": "seglib.runs.batch",
    "run_from_preset": "seglib.training.presets",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """``seglib.train`` and the like: imported from their stage on first use."""
    if name not in _API:
        raise AttributeError(f"module 'seglib' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))


from seglib import quiet  # noqa: E402

quiet.install()
