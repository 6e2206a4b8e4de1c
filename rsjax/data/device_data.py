"""The GPU-resident input path: the whole decoded split in device memory.

``DeviceIterator`` keeps the raw images (uint8 / uint16) replicated on every device, draws
each global batch's indices on the host (a permutation per epoch from ``seed`` and the
epoch number) and gathers the batch on device; the train step then makes the two views
with :mod:`rsjax.data.device_augment` inside the jitted program. Batches are dicts of
global arrays sharded on ``data``: ``image`` (raw), ``label``, ``scene_id`` and, in
crops-as-scenes mode, ``region`` (the sub-crop each view is cut from).

Iterator state is ``{"format": "rsjax.data.device/v1", "next_batch": N}``: resuming draws
the same batches as an uninterrupted run.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import sharding as shd
from rsjax.data import device_augment

STATE_FORMAT = "rsjax.data.device/v1"


def load_raw(cfg_data: Any, split: str, *, max_examples: int | None = None):
    """Raw (un-normalized) images [N, H, W, C] and labels [N] of ``split``.

    ``data.manual_dir`` set: read the original class folder (EuroSAT-style) directly;
    otherwise read the TFDS dataset ``data.name`` through ``tfds.data_source``.
    """
    manual = cfg_data.get("manual_dir", None) if hasattr(cfg_data, "get") else None
    if manual:
        from rsjax.data import folders

        images, labels, _ = folders.load_class_folder(
            manual, split, seed=int(cfg_data.get("split_seed", 0)),
            cache_dir=cfg_data.get("cache_dir", None) or None)
    else:
        from rsjax.data import pipeline

        source = pipeline.open_source(cfg_data, split)
        n = len(source)
        rows = []
        for s in range(0, n, 512):
            rows.extend(source.read(range(s, min(n, s + 512))))
        images = np.stack([np.asarray(r["image"]) for r in rows])
        labels = np.asarray([np.asarray(r.get("label", -1)).reshape(()) for r in rows], np.int32)
    if max_examples is not None and max_examples < len(labels):
        # Class-folder arrays are sorted by class: take a fixed random subset, not a prefix.
        keep = np.sort(np.random.default_rng(0).permutation(len(labels))[:max_examples])
        images, labels = images[keep], labels[keep]
    return images, labels


def normalized_eval_arrays(cfg_data: Any, split: str, *, max_examples: int | None = None):
    """float32 standardized images (registry statistics) + labels, for kNN / linear probe."""
    from rsjax.data import registry

    info = registry.get_dataset_info(cfg_data.name)
    images, labels = load_raw(cfg_data, split, max_examples=max_examples)
    return registry.normalize(images, info), labels


class DeviceIterator:
    def __init__(self, images: np.ndarray, labels: np.ndarray, *, global_batch_size: int, seed: int,
                 mesh, crops_as_scenes: int = 0):
        g2 = max(1, crops_as_scenes) ** 2
        if global_batch_size % g2:
            raise ValueError(f"batch_size {global_batch_size} must be a multiple of crops_as_scenes^2 = {g2}")
        self.mesh = mesh
        self.g = crops_as_scenes
        self.per_batch = global_batch_size // g2  # source images per global batch
        self.batch_size = global_batch_size
        self.n = images.shape[0]
        if self.per_batch > self.n:
            raise ValueError(f"batch needs {self.per_batch} images but the split has {self.n}")
        self.steps_per_epoch = self.n // self.per_batch
        self.seed = seed
        self.images = jax.device_put(images, shd.replicated(mesh))
        self.labels = jax.device_put(labels.astype(np.int32), shd.replicated(mesh))
        h, w = images.shape[1:3]
        self._regions = (device_augment.crops_as_scenes_regions(global_batch_size, self.g, h, w)
                         if self.g else None)
        self._next = 0
        self._perm_epoch = -1
        self._perm = None
        g2_, dat = g2, shd.data_sharded(mesh)

        def gather(images, labels, idx, regions):
            full = jnp.repeat(idx, g2_)
            out = {"image": images[full], "label": labels[full], "scene_id": full.astype(jnp.int32)}
            if regions is not None:
                out["region"] = regions
            return out

        self._gather = jax.jit(gather, out_shardings=dat)

    def _indices(self, b: int) -> np.ndarray:
        epoch, pos = divmod(b, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm[pos * self.per_batch : (pos + 1) * self.per_batch].astype(np.int32)

    def __iter__(self):
        return self

    def __next__(self):
        idx = self._indices(self._next)
        self._next += 1
        return self._gather(self.images, self.labels, jnp.asarray(idx), self._regions)

    def get_state(self) -> bytes:
        return json.dumps({"format": STATE_FORMAT, "next_batch": self._next}).encode()

    def set_state(self, state) -> None:
        if isinstance(state, (bytes, str)):
            state = json.loads(state)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} iterator state: {state!r:.200}")
        self._next = int(state["next_batch"])
