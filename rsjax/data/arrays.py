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
import zlib
from typing import Callable, Mapping

import numpy as np

from rsjax import errors
from rsjax.data import (
    ops,  # the crop_flip op (numpy backend): one definition of the paired draw
)


def paired_crop_flip(
    arrays: Mapping[str, np.ndarray], index: int, crop: int, rng: np.random.Generator, augment: bool = True
) -> dict[str, np.ndarray]:
    """Example ``index``: the same random ``crop`` window, flip and 90-degree rotation for every
    spatial array (``[N, H, W, ...]``: images and masks alike; arrays with fewer than three axes,
    e.g. class labels, are passed through). ``crop`` <= 0 or >= the image keeps the full image;
    ``augment=False`` takes the centre window without flip / rotation."""
    example = {name: arr[index] for name, arr in arrays.items()}
    return ops.apply(f"crop_flip({max(int(crop), 0)}, augment={bool(augment)})", example, rng)


def batch_at(
    arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, step: int, *, crop: int = 0, augment: bool = True
) -> dict[str, np.ndarray]:
    """Training batch ``step`` (0-based): a pure function of ``(seed, step)``."""
    n = len(next(iter(arrays.values())))
    per_epoch = max(1, math.ceil(n / batch_size))
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch, 11]).permutation(n)
    idx = np.resize(perm, per_epoch * batch_size)[pos * batch_size : (pos + 1) * batch_size]
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
      source: what the arrays are, for the error a resume with other data gets (name the config
        keys that choose them).

    The state records a fingerprint of the arrays (shapes, dtypes and a CRC of up to 256 evenly
    spaced examples of each): a resume on other training data of the same size (another
    labelled subset, split or crop) is refused instead of continuing on different batches.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        seed: int,
        *,
        crop: int = 0,
        augment: bool = True,
        transform: Callable[[dict], dict] | None = None,
        source: str = "the training arrays",
    ):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays differ in length: {lengths}")
        if not next(iter(lengths.values())):
            raise ValueError("no training examples")
        self.arrays, self.batch_size, self.seed = dict(arrays), int(batch_size), int(seed)
        self.crop, self.augment, self.transform = int(crop), bool(augment), transform
        self.source = source
        self.step = 0
        self.fingerprint = _fingerprint(self.arrays)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = batch_at(self.arrays, self.batch_size, self.seed, self.step, crop=self.crop, augment=self.augment)
        self.step += 1
        return self.transform(batch) if self.transform is not None else batch

    def get_state(self) -> str:
        return json.dumps(
            {
                "kind": "arrays",
                "step": self.step,
                "seed": self.seed,
                "batch_size": self.batch_size,
                "num_examples": len(next(iter(self.arrays.values()))),
                "fingerprint": self.fingerprint,
            }
        )

    def set_state(self, state: str | dict) -> None:
        s = json.loads(state) if isinstance(state, str) else dict(state)
        mine = json.loads(self.get_state())
        for key in ("kind", "seed", "batch_size", "num_examples", "fingerprint"):
            if key in s and s[key] != mine[key]:  # states written before the fingerprint lack it
                raise errors.CheckpointError(
                    f"the checkpoint was written for other training data: {key} {s[key]!r} there, {mine[key]!r} "
                    f"now ({self.source}). The settings that choose this data changed since; restore them, or "
                    f"start a new workdir"
                )
        self.step = int(s["step"])


def _fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    crc = 0
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        rows = a[:: max(1, -(-len(a) // 256))]  # at most 256 evenly spaced examples
        crc = zlib.crc32(f"{name}{a.shape}{a.dtype}".encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(rows).tobytes(), crc)
    return f"{crc:08x}"
