"""The GPU-resident input path: the whole decoded split in device memory.

``DeviceIterator`` keeps the raw images (uint8 / uint16) replicated on every device, draws
the units of each global batch on the host and gathers the batch on device; the train step
then makes the two views with :mod:`rsjax.data.device_augment` inside the jitted program.

Batch composition is the host pipeline's, literally: the same
:class:`rsjax.data.pipeline.EpochPlan` over the same units and scene ids, so for a given
``seed`` and batch number both input paths put the same units in the same rows (only the
augmentation random numbers differ). A *unit* is one image, or one of the ``g x g`` adjacent
sub-crops of an image when ``crops_as_scenes = g > 0``; see :func:`rsjax.data.pipeline.batch_layout`:

* ``scenes_per_batch = S > 0``: ``S`` distinct scenes x ``samples_per_scene = k`` units, laid
  out scene by scene (rows ``[j*k, (j+1)*k)`` are scene ``j``). The scene id of a unit is the
  record's ``scene_id`` feature (TFDS datasets that store one, e.g. ``rs_synthetic``: the
  tile), else the record index; with ``crops_as_scenes`` it is the source image (with
  ``data.pretrain_images``, the source record: its images at every date are one scene).
* ``scenes_per_batch = 0`` and ``crops_as_scenes = g > 0``: every image of the batch brings
  all its ``g x g`` crops (``S = batch / g^2`` scenes of ``k = g^2`` crops).
* both 0: plain random batches (a fresh permutation each epoch).

Batches are dicts of global arrays sharded on ``data``: ``image`` (raw, the whole source
image), ``label``, ``scene_id`` and, with ``crops_as_scenes``, ``region`` (the float
``(y0, x0, h, w)`` sub-crop each view is cut from).

Views: the train step makes them from ``config.data.augment`` with the jax backend of the op
registry (``rsjax.data.input.make_batch_transform`` -> ``device_augment.two_views``), the same
recipe the host pipeline applies per example with the numpy backend.
Host-only loader keys (``num_workers``, ``num_threads``, ``prefetch_batches``) do not apply.

Iterator state is UTF-8 JSON ``{"format": "rsjax.data.device/v2", "next_batch": N,
"fingerprint": {...}}``: resuming draws the same batches as an uninterrupted run, and a
state saved with another seed / dataset / batch layout is refused.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import sharding as shd
from rsjax.data import device_augment, pipeline

STATE_FORMAT = "rsjax.data.device/v2"
_OLD_FORMATS = ("rsjax.data.device/v1",)


class DeviceIterator:
    """Checkpointable iterator of device-resident raw batches (see the module docstring).

    Args:
      images, labels: the decoded split, [N, H, W, C] raw values and [N] labels.
      global_batch_size: rows per global batch.
      seed: data seed (the epoch plans derive from it, as on the host path).
      mesh: the device mesh (images replicated, batches sharded on ``data``).
      crops_as_scenes: g > 0 cuts each image into g x g adjacent crops, each in its image's scene.
      scene_ids: [N] scene id per image (None = every image its own scene, as crops_as_scenes
        means on the host path; rsjax.data.input.pretrain_images passes it).
      scenes_per_batch, samples_per_scene: scene-aware batching (``data.*`` keys).
      dataset: name recorded in the state fingerprint.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        global_batch_size: int,
        seed: int,
        mesh,
        crops_as_scenes: int = 0,
        scene_ids: np.ndarray | None = None,
        scenes_per_batch: int = 0,
        samples_per_scene: int = 2,
        dataset: str = "",
    ):
        from rsjax.data import pipeline  # EpochPlan: the host path's batch composition

        self.g = int(crops_as_scenes or 0)
        g2 = max(1, self.g) ** 2
        self.n = int(images.shape[0])
        if scene_ids is None:
            scene_ids = np.arange(self.n, dtype=np.int64)
        scene_ids = np.asarray(scene_ids, np.int64)
        if scene_ids.shape != (self.n,):
            raise ValueError(f"scene_ids has shape {scene_ids.shape}, expected ({self.n},)")
        spb, k = pipeline.batch_layout(global_batch_size, int(scenes_per_batch or 0), int(samples_per_scene), self.g)
        # Unit u = sub-crop u % g^2 of image u // g^2, in the scene of its image (the host's
        # pipeline.unit_scene_ids, where that scene is the image itself).
        self.unit_scenes = np.repeat(scene_ids, g2)
        self.plan = pipeline.EpochPlan(self.unit_scenes, global_batch_size, seed, spb, k)
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.mesh = mesh
        self.batch_size = int(global_batch_size)
        self.seed = int(seed)
        self._g2 = g2
        self._next = 0
        self._fingerprint = {
            "dataset": dataset,
            "num_units": self.plan.num_units,
            "global_batch_size": self.batch_size,
            "seed": self.seed,
            "scenes_per_batch": int(scenes_per_batch or 0),
            "samples_per_scene": int(samples_per_scene) if scenes_per_batch else None,
            "crops_as_scenes": self.g,
        }
        self.images = jax.device_put(images, shd.replicated(mesh))
        self.labels = jax.device_put(np.asarray(labels).astype(np.int32), shd.replicated(mesh))
        h, w = images.shape[1:3]
        # [g^2, 4] region of every sub-crop; a batch row takes the region of its unit's crop.
        self._region_table = (
            np.asarray(device_augment.sub_crop_regions(np.arange(g2), self.g, h, w)) if self.g else None
        )

        def gather(images, labels, idx, scene, regions):
            out = {"image": images[idx], "label": labels[idx], "scene_id": scene}
            if regions is not None:
                out["region"] = regions
            return out

        self._gather = jax.jit(gather, out_shardings=shd.data_sharded(mesh))

    def units(self, b: int) -> np.ndarray:
        """int64 [global_batch_size] unit ids of global batch ``b`` (the host plan's)."""
        return self.plan.batch(b)

    def __iter__(self):
        return self

    def __next__(self):
        units = self.units(self._next)
        self._next += 1
        idx = (units // self._g2).astype(np.int32)
        scene = self.unit_scenes[units].astype(np.int32)
        regions = self._region_table[units % self._g2] if self.g else None
        return self._gather(
            self.images,
            self.labels,
            jnp.asarray(idx),
            jnp.asarray(scene),
            None if regions is None else jnp.asarray(regions),
        )

    @property
    def next_batch(self) -> int:
        """Global index of the batch the next ``next()`` returns."""
        return self._next

    def get_state(self) -> bytes:
        return json.dumps(
            {"format": STATE_FORMAT, "next_batch": self._next, "fingerprint": self._fingerprint}, sort_keys=True
        ).encode("utf-8")

    def set_state(self, state) -> None:
        if isinstance(state, (bytes, bytearray)):
            state = state.decode("utf-8")
        if isinstance(state, str):
            state = json.loads(state)
        if state.get("format") in _OLD_FORMATS:
            raise ValueError(
                f"iterator state {state.get('format')!r} was written by an older device input path "
                f"whose batches were drawn differently (no scene-aware batching); resuming would not "
                f"continue the same batch sequence: start a new workdir"
            )
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} iterator state: {state!r:.200}")

        pipeline.check_fingerprint(state, self._fingerprint)
        self._next = int(state["next_batch"])
