"""Every training parameter once: its default, type, choices, valid range and one-line help
(:mod:`seglib.parameters`). The ``train`` flags, notebook 02's parameters cell, the batch keys and
the checks of their values derive from :class:`TrainConfig`, so a new parameter is one field here."""
from __future__ import annotations

from dataclasses import dataclass

from seglib.layout import ARTIFACTS, DEFAULT, PREPARED, from_notebooks
from seglib.parameters import Parameters, param
from seglib.training.distribute import STRATEGIES
from seglib.training.losses import LOSSES
from seglib.training.model import ARCHITECTURES

MONITORS = ("val_loss", "val_pixel_accuracy", "val_mean_iou")
LR_SCHEDULES = ("constant", "cosine", "plateau")


@dataclass
class TrainConfig(Parameters):
    """A training run's parameters (``python -m seglib train --help`` lists them with their help).

    Example:
        ``train(TrainConfig("data/prepared/default", "artifacts/first", epochs=5, encoder_weights=None))``
    """

    prepared_dir: str = param(help="a prepared dataset (python -m seglib prepare)",
                              notebook=from_notebooks(f"{PREPARED}/{DEFAULT}"))
    run_dir: str = param(help="the run's folder (resumed if unfinished)",
                         notebook=from_notebooks(f"{ARTIFACTS}/{DEFAULT}"))
    arch: str = param("unet", "the model", tuple(ARCHITECTURES))
    backbone: str = param("resnet34", "the encoder: segmentation-models' backbones; mit_b0 ... mit_b5 for segformer; "
                                       "base8/16/32 for tinyunet")
    epochs: int = param(50, "at most this many epochs (early stopping may end sooner)", min=1, max=100_000)
    batch_size: int = param(8, "images per step (per replica)", min=1, max=65_536)
    lr: float = param(1e-3, "Adam's learning rate", above=0)
    patience: int = param(5, "epochs without improvement before early stopping", min=0)
    monitor: str = param("val_loss", "what early stopping and the best model watch", MONITORS)
    encoder_weights: str | None = param("imagenet", "imagenet (downloads once), none, or the path of an encoder "
                                                    "weights file (see fetch-weights)")
    init_from: str | None = param(None, "none, or an earlier run's folder: start from its model (fine-tune)",
                                  notebook="none")  # a Colab text field cannot hold None
    preset: str | None = param(None, "none, or a keras-hub SegFormer preset to fine-tune from (with --arch segformer): "
                                     "a name (downloaded once) or a folder written by save_to_preset",
                               notebook="none")
    augment: bool = param(False, "random flips, scale-crops, brightness and contrast")
    loss: str = param("ce", ", ".join(help for _, help in LOSSES.values()), tuple(LOSSES))
    ohem_threshold: float = param(0.7, "ohem: train on the pixels whose true-class probability is below this",
                                  above=0, max=1)
    ohem_min_kept: float = param(1 / 16, "ohem: and on at least this share of a batch's pixels, the hardest",
                                 above=0, max=1)
    lr_schedule: str = param("constant", "cosine: to 1% of lr at the last epoch; plateau: halve on plateaus",
                             LR_SCHEDULES)
    warmup_epochs: float = param(0, "raise the learning rate from lr/100 to lr over these epochs first", min=0)
    tensorboard: bool = param(False, "write RUN_DIR/tensorboard/ (tensorboard --logdir)")
    strategy: str = param("auto", "tf.distribute strategy; auto: TPU if present, mirrored over 2+ GPUs, else one "
                                  "device", STRATEGIES)
    cpu_devices: int = param(0, "split the CPU into this many logical devices (0: no split): the mirrored strategy "
                                "without GPUs, for tests and benchmarks (it shows the overhead, not a speed-up)",
                             min=0, max=64)
    scale_lr: bool = param(False, "multiply lr by the replicas (batch_size is per replica)")
    wait_timeout: float = param(600, "seconds to wait for the other workers or the TPU before giving up",
                                above=0, max=86_400 * 7)
    jit_compile: bool = param(False, "compile training steps with XLA (slower on CPUs)")
    seed: int = param(0, "seeds the weights, the shuffling and the augmentation", min=0, max=2**32 - 1)
    overwrite: bool = param(False, "replace a finished run in RUN_DIR (an unfinished one is resumed without this)")
