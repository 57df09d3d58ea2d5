"""Every training parameter once: its default, type, choices and one-line help. The CLI's ``train``
flags, notebook 02's parameters cell (so the batch configs' keys) and the checks of :mod:`.checks`
are derived from :class:`TrainConfig`, so a new parameter is one field here."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from seglib.training.distribute import STRATEGIES
from seglib.training.losses import LOSSES
from seglib.training.model import ARCHITECTURES

MONITORS = ("val_loss", "val_pixel_accuracy", "val_mean_iou")
LR_SCHEDULES = ("constant", "cosine", "plateau")
TYPES = {"str": str, "str | None": str, "int": int, "float": float, "bool": bool}


def _p(default, help: str, choices: tuple | None = None, **notebook):
    """A parameter: ``notebook`` may give the notebook's own default (``notebook=...``) where it differs."""
    return field(default=default, metadata={"help": help, "choices": choices, **notebook})


@dataclass
class TrainConfig:
    prepared_dir: str = field(metadata={"help": "a prepared dataset (python -m seglib prepare)",
                                        "notebook": "../data/prepared/default"})
    run_dir: str = field(metadata={"help": "the run's folder (resumed if unfinished)",
                                   "notebook": "../artifacts/default"})
    arch: str = _p("unet", "the model", tuple(ARCHITECTURES))
    backbone: str = _p("resnet34", "the encoder (segmentation-models' backbones)")
    epochs: int = _p(50, "at most this many epochs (early stopping may end sooner)")
    batch_size: int = _p(8, "images per step (per replica)")
    lr: float = _p(1e-3, "Adam's learning rate")
    patience: int = _p(5, "epochs without improvement before early stopping")
    monitor: str = _p("val_loss", "what early stopping and the best model watch", MONITORS)
    encoder_weights: str | None = _p("imagenet", "imagenet (downloads once), none, or the path of an encoder weights "
                                                 "file (see fetch-weights)")
    init_from: str | None = _p(None, "none, or an earlier run's folder: start from its model (fine-tune)",
                               notebook="none")
    augment: bool = _p(False, "random flips, scale-crops, brightness and contrast")
    loss: str = _p("ce", ", ".join(help for _, help in LOSSES.values()), tuple(LOSSES))
    ohem_threshold: float = _p(0.7, "ohem: train on the pixels whose true-class probability is below this")
    ohem_min_kept: float = _p(1 / 16, "ohem: and on at least this share of a batch's pixels, the hardest")
    lr_schedule: str = _p("constant", "cosine: to 1% of lr at the last epoch; plateau: halve on plateaus",
                          LR_SCHEDULES)
    warmup_epochs: float = _p(0, "raise the learning rate from lr/100 to lr over these epochs first")
    tensorboard: bool = _p(False, "write RUN_DIR/tensorboard/ (tensorboard --logdir)")
    strategy: str = _p("auto", "tf.distribute strategy; auto: TPU if present, mirrored over 2+ GPUs, else one device",
                       STRATEGIES)
    scale_lr: bool = _p(False, "multiply lr by the replicas (batch_size is per replica)")
    wait_timeout: float = _p(600, "seconds to wait for the other workers or the TPU before giving up")
    jit_compile: bool = _p(False, "compile training steps with XLA (slower on CPUs)")
    seed: int = _p(0, "seeds the weights, the shuffling and the augmentation")
    overwrite: bool = _p(False, "replace a finished run in RUN_DIR (an unfinished one is resumed without this)")

    def __post_init__(self):
        for name in ("encoder_weights", "init_from"):  # "none" from a command line or a Colab form
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
                setattr(self, name, None)

    @classmethod
    def from_parameters(cls, values: dict) -> TrainConfig:
        """From a notebook's UPPER_CASE parameters (e.g. ``globals()``)."""
        return cls(**{f.name: values[f.name.upper()] for f in fields(cls)})
