"""Registry of pretraining methods, selected by ``config.method``."""

from __future__ import annotations

from typing import Callable

import ml_collections

from rsjax.methods.base import Method
from rsjax.methods.dino import DINO
from rsjax.methods.false import FALSE
from rsjax.methods.moco import MoCo
from rsjax.methods.simclr import SimCLR
from rsjax.methods.swimdiff import SwiMDiff

_REGISTRY: dict[str, Callable[[ml_collections.ConfigDict], Method]] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "swimdiff": SwiMDiff,
    "false": FALSE,
    "dino": DINO,
}


def register(name: str, cls: Callable[[ml_collections.ConfigDict], Method]) -> None:
    _REGISTRY[name] = cls


def get_method(config: ml_collections.ConfigDict) -> Method:
    name = config.method
    if name not in _REGISTRY:
        raise ValueError(f"config.method={name!r} is unknown; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name](config)


def available() -> list[str]:
    return sorted(_REGISTRY)
