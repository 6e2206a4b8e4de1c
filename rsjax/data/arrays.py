"""A resumable batch iterator over in-memory arrays (the input of every supervised task).

Dense jobs (segmentation, change detection, noisy-label pretraining and transfer) and the
classification fine-tune hold their training split as arrays (images, masks, labels). Batch
``s`` is a pure function of ``(seed, s)``: the rows of epoch ``e`` are a permutation seeded
with ``(seed, e)``, and every example gets the same random ``crop`` window, horizontal flip
and 90-degree rotation for all of its spatial arrays (image A / image B / mask alike) from a
generator seeded with ``(seed, s)``. The iterator state is the next step, so a resumed run
(``rsjax.train.fit``) draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
from typing import Callable, Mapping

import numpy as np


def paired_crop_flip(arrays: Mapping[str, np.ndarray], index: int, crop: int, rng: np.random.Generator,
                     augment: bool = True) -> dict[str, np.ndarray]:
    """Example ``index``: the same random ``crop`` window, flip and 90-degree rotation for every
    spatial array (``[N, H, W, ...]``: images and masks alike; arrays with fewer than three axes,
    e.g. class labels, are passed through). ``crop`` <= 0 or >= the image keeps the full image;
    ``augment=False`` takes the centre window without flip / rotation."""
    from rsjax.data import ops  # the crop_flip op (numpy backend): one definition of the paired draw

    example = {name: arr[index] for name, arr in arrays.items()}
    return ops.apply(f"crop_flip({max(int(crop), 0)}, augment={bool(augment)})", example, rng)


def batch_at(arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, step: int, *, crop: int = 0,
             augment: bool = True) -> dict[str, np.ndarray]:
    """Training batch ``step`` (0-based): a pure function of ``(seed, step)``."""
    n = len(next(iter(arrays.values())))
    per_epoch = max(1, math.ceil(n / batch_size))
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch, 11]).permutation(n)
    idx = np.resize(perm, per_epoch * batch_size)[pos * batch_size:(pos + 1) * batch_size]
    rng = np.random.default_rng([seed, step, 12])
    items = [paired_crop_flip(arrays, int(i), crop, rng, augment) for i in idx]
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


class ArrayIterator:
    """Endless iterator of global host batches over ``arrays`` (``rsjax.train.fit``'s data interface).

    Args:
      arrays: ``name -> [N, ...]`` arrays of one split (same N).
      batch_size: global batch size.
      seed: fixes the epoch permutations and the augmentation.
      crop: square crop size for spatial arrays (0 = whole images).
      augment: random crop window + flip + rot90 (else centre crop).
      transform: ``host batch -> host batch`` applied last (normalisation, label remap).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, *, crop: int = 0,
                 augment: bool = True, transform: Callable[[dict], dict] | None = None):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays differ in length: {lengths}")
        if not next(iter(lengths.values())):
            raise ValueError("no training examples")
        self.arrays, self.batch_size, self.seed = dict(arrays), int(batch_size), int(seed)
        self.crop, self.augment, self.transform = int(crop), bool(augment), transform
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = batch_at(self.arrays, self.batch_size, self.seed, self.step, crop=self.crop, augment=self.augment)
        self.step += 1
        return self.transform(batch) if self.transform is not None else batch

    def get_state(self) -> str:
        return json.dumps({"kind": "arrays", "step": self.step, "seed": self.seed, "batch_size": self.batch_size,
                           "num_examples": len(next(iter(self.arrays.values())))})

    def set_state(self, state: str | dict) -> None:
        s = json.loads(state) if isinstance(state, str) else dict(state)
        mine = json.loads(self.get_state())
        for key in ("kind", "seed", "batch_size", "num_examples"):
            if key in s and s[key] != mine[key]:
                raise ValueError(f"the checkpoint's data iterator has {key}={s[key]!r}, this run {mine[key]!r}: "
                                 f"the training data or batch changed since the checkpoint was written")
        self.step = int(s["step"])
