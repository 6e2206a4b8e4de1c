"""The trainable a config names (``config.method``): a self-supervised method of
:mod:`rsjax.methods`, or ``noisy_label``: supervised segmentation pretraining on noisy masks
(the segmentation task of :mod:`rsjax.tasks` with the noisy-label job's ignore value). Above
both packages, so that neither imports the other."""

from __future__ import annotations

import ml_collections

from rsjax import methods
from rsjax.data.segmentation import IGNORE_INDEX
from rsjax.tasks import SegmentationTask
from rsjax.trainable import Trainable

NOISY_LABEL = "noisy_label"


def from_config(config: ml_collections.ConfigDict) -> Trainable:
    """The trainable of ``config.method``; ConfigError-like ValueError naming the choices."""
    if config.method == NOISY_LABEL:
        return SegmentationTask(config, ignore_index=IGNORE_INDEX)
    if config.method not in methods.available():
        raise ValueError(f"config.method={config.method!r} is unknown; choose one of {available()}")
    return methods.get_method(config)


def available() -> list[str]:
    return sorted([*methods.available(), NOISY_LABEL])
