"""Grain input pipelines over TFDS array_record data sources.

Pretraining (:func:`make_pretrain_iterator`)
--------------------------------------------
Every global batch is a pure function of ``(seed, global batch index)``:

* An *epoch plan* (numpy, seeded by ``(seed, epoch)``) lists, for each step of the epoch, the
  ``global_batch_size`` *units* of that global batch. A unit is one stored example, or one of
  the ``g x g`` adjacent sub-crops of an example when ``crops_as_scenes = g > 0``.
* Process ``p`` of ``P`` materializes rows ``[p * b_local, (p + 1) * b_local)`` of each global
  batch (``b_local = global_batch_size / P``), so concatenating the slices of all processes
  gives exactly the batch a single process would produce: the order does not depend on the
  process count.
* Augmentations draw from ``np.random.default_rng([seed, batch_index, row])``: the same unit
  at the same position gets the same two views after a resume, on any number of processes.
* The stream is a ``grain.MapDataset`` over global batch indices (``range -> map``), turned into
  an ``IterDataset`` with thread prefetching (``grain.ReadOptions``) and optionally worker
  processes (``mp_prefetch``; batches are dealt to workers whole, so the output does not depend
  on the worker count). Resuming slices the MapDataset at the saved batch index, which is exact.

Batch composition:

* ``scenes_per_batch = 0`` and ``crops_as_scenes = 0``: plain random batches; each epoch is
  a fresh permutation of all units (``epoch = floor(units / global_batch)`` steps; the
  remainder is dropped, a different remainder each epoch).
* ``scenes_per_batch = S > 0``: each global batch holds ``S`` *distinct* scenes each
  contributing ``k = samples_per_scene`` units, laid out scene by scene (rows
  ``[j*k, (j+1)*k)`` are scene ``j``); ``global_batch_size`` must equal ``S * k``. Per epoch
  every scene's units are shuffled and cut into ``max(1, n_s // k)`` groups of ``k`` (a scene
  with fewer than ``k`` units repeats units, with different augmentations). Batches then
  take ``S`` scenes with the most groups left, ties broken at random (for equal-sized
  scenes: a uniformly random set of scenes per batch, each scene once per round); this keeps
  every batch feasible, so an epoch has exactly ``T`` steps, the largest ``T`` with
  ``sum_s min(groups_s, T) >= S * T`` (= total groups // S for equal-sized scenes).
* ``crops_as_scenes = g > 0``: every stored image is cut into ``g x g`` adjacent crops of
  ``H // g`` pixels that share the scene id "source image" (the record index), so datasets
  made of single patches (EuroSAT) can form scenes. Otherwise the scene id is the dataset's
  ``scene_id`` feature when it has one (``rs_synthetic``: the tile), else the record index.
  With ``scenes_per_batch = 0`` every image of a batch brings all its ``g x g`` crops: the
  scene-aware layout with ``S = global_batch_size / g^2`` and ``k = g^2``
  (:func:`batch_layout`); with ``scenes_per_batch = S > 0`` the batch is ``S`` source images
  x ``k = samples_per_scene`` of their crops.

The GPU-resident path (:mod:`rsjax.data.device_data`) uses the same :class:`EpochPlan`, so
both paths put the same units in the same rows of every global batch.

Views: ``config.data.augment``, the view recipe (an op string, :mod:`rsjax.data.ops`), built
once for the numpy backend and applied to every unit with the row's generator; the device
path applies the same recipe with the jax backend.

Batch: ``view1``, ``view2`` float32 ``[b_local, image_size, image_size, C]`` normalized with
the registry's per-band statistics, ``scene_id`` int32 ``[b_local]``, ``label`` int32 ``[b_local]`` (-1 for
unlabelled or multi-label data).

Arrays in host memory (evaluation inputs, dense training, the device-resident split):
:func:`read_split` reads any split (class folder or TFDS, one subset rule), :func:`eval_arrays`
prepares evaluation inputs with the ``data.pp_eval`` op recipe.

Input checks (:func:`check_images`, :func:`check_label`): a record whose image has the wrong
band count or dtype, or NaN / inf pixels, and (evaluation arrays) a label outside the
dataset's classes raise DataError naming the dataset, split and record index.

Checkpointing: ``it.get_state()`` returns **bytes**: UTF-8 JSON ``{"format", "next_batch",
"fingerprint"}`` (``json.loads`` gives a JSON-serializable dict), the same convention as
``grain.DataLoaderIterator``, so ``grain.checkpoint.CheckpointSave(it)`` works with Orbax.
``it.set_state(state)`` accepts that bytes, the decoded str or the dict, checks that seed,
dataset and batch layout match, and continues at ``next_batch``. ``next_batch`` counts global
batches, so a run can also resume with a different number of processes.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
from typing import Any, Iterator, Mapping, Optional

import grain
import numpy as np
from absl import flags
from tqdm.auto import tqdm

from rsjax.data import augment, folders, ops, registry, scenes, tiles
from rsjax.data.defaults import default_data_config  # noqa: F401  (re-exported)
from rsjax.errors import ConfigError, DataError, MissingDataError

STATE_FORMAT = "rsjax.data.pipeline/v1"


# ----------------------------------------------------------------------------------------
# Data source
# ----------------------------------------------------------------------------------------


class DataSource:
    """A TFDS split opened lazily (per process, thread-safe); picklable for grain workers."""

    def __init__(
        self,
        name: str,
        split: str,
        builder_config: Optional[str] = None,
        data_dir: Optional[str] = None,
        auto_build: bool = True,
        split_key: str = "data.train_split",
    ):
        self.name = name
        self.split = split
        self.split_key = split_key  # the config key that chose ``split`` (named in the error)
        self.builder_config = builder_config or None
        self.data_dir = os.path.expanduser(data_dir) if data_dir else None
        self.auto_build = auto_build
        self._lock = threading.Lock()
        self._source = None
        self._builder = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_source"] = None
        d["_builder"] = None
        d["_lock"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    @property
    def builder(self):
        self._open()
        return self._builder

    def _open(self):
        if self._source is not None:
            return self._source
        with self._lock:
            if self._source is None:
                from rsjax.data import (
                    build,  # heavy tfds import only when data is needed
                )

                if self.auto_build:
                    build.ensure_built(self.name, self.data_dir, self.builder_config)
                builder = build.get_builder(self.name, self.data_dir, self.builder_config)
                if not build.is_built(builder):
                    raise MissingDataError(
                        f"dataset {self.name!r} (config {self.builder_config!r}) is not built in "
                        f"{builder.data_dir_root!r}; run python -m rsjax.data.build {self.name} "
                        f"--manual_dir=DIR --data_dir={builder.data_dir_root}"
                    )
                splits = list(builder.info.splits.keys())
                if self.split not in splits:
                    raise ConfigError(
                        f"dataset {self.name!r} has no split {self.split!r} (config key "
                        f"{getattr(self, 'split_key', 'data.train_split')}); its splits: {splits}"
                    )
                self._builder = builder
                self._source = builder.as_data_source(split=self.split)
        return self._source

    def __len__(self) -> int:
        return len(self._open())

    def features(self) -> tuple[str, ...]:
        return tuple(self.builder.info.features.keys())

    def read(self, indices) -> list[dict]:
        src = self._open()
        idx = [int(i) for i in indices]
        if hasattr(src, "__getitems__"):
            return list(src.__getitems__(idx))
        return [src[i] for i in idx]

    def column(self, key: str, chunk: int = 512) -> np.ndarray:
        """All values of scalar feature ``key`` in record order (decodes only that key)."""
        src = self._open()
        n = len(src)
        feats = self.builder.info.features
        skip = {k: _skip_decoding() for k in feats.keys() if k != key}
        try:
            lite = self.builder.as_data_source(split=self.split, decoders=skip)
        except Exception:  # noqa: BLE001 - decoders unsupported: decode everything
            lite = src
        out = []
        for s in range(0, n, chunk):
            rows = lite.__getitems__(list(range(s, min(n, s + chunk))))
            out.extend(int(np.asarray(r[key]).reshape(())) for r in rows)
        return np.asarray(out, np.int64)


def _skip_decoding():
    import tensorflow_datasets as tfds  # heavy import (TFDS, ~2 s): only when a TFDS split is read

    return tfds.decode.SkipDecoding()


def open_source(cfg_data: Any, split: str, split_key: str = "data.train_split") -> DataSource:
    """:class:`DataSource` for ``split`` of the dataset named by ``cfg_data``; ``split_key``: the
    config key that chose ``split``, named when the dataset has no such split."""
    return DataSource(
        cfg_data.name, split, cfg_data.builder_config, cfg_data.data_dir, bool(cfg_data.auto_build), split_key=split_key
    )


_SCENE_CACHE: dict[tuple, np.ndarray] = {}


def read_split(
    cfg_data,
    split: str,
    *,
    fields: Mapping[str, str] | None = None,
    limit: int | None = None,
    desc: str = "read",
    split_key: str = "eval.train_split / eval.test_split",
) -> dict[str, np.ndarray]:
    """THE reader of a split into host memory: stacked raw arrays in their stored dtype.

    Every job that holds a split as arrays reads it here (evaluation inputs, dense training,
    the device-resident pretraining split, noisy-label data); normalisation and resizing are
    the caller's op recipe (e.g. :func:`eval_arrays`), so large datasets (LEVIR-CD 1024 px
    tiles) stay compact. ``data.folder`` set: the ``<Class>/<image>`` tree
    (:func:`rsjax.data.folders.load_class_folder`, cached under ``data.cache_dir``), each image
    its own scene; for a dataset with a colour table (``DatasetInfo.mask_colours``) the tile
    folder (:func:`rsjax.data.tiles.read`: ``image``, ``mask``, ``scene_id`` = tile). Otherwise
    the TFDS dataset ``data.name``. Either source can be cut by scene at run time
    (``data.test_scenes`` / ``data.val_scenes``, the one rule of :mod:`rsjax.data.scenes`): then
    ``train`` / ``test`` / ``validation`` are scene selections of the TFDS ``train`` split (or of the
    tile folder's tiles), in record order.

    Args:
      cfg_data: the ``config.data`` block.
      split: the split name (``split_key``: the config key that chose it, named when the
        dataset has no such split).
      fields: ``role -> feature name`` to read (a missing feature is refused naming the
        features the dataset has). None: ``image``, ``label`` (-1 when the dataset has none)
        and ``scene_id`` (the record index when it has none).
      limit: keep the subset of :func:`rsjax.data.folders.subset_indices` (the one subset rule).

    Returns:
      ``{role: [N, ...] array}``.
    """
    info = registry.data_info(cfg_data)
    if info.mask_colours and not cfg_data.get("folder"):
        raise ConfigError(
            f"dataset {info.name!r} is read from its folder as it unpacks: set config.data.folder "
            f"(e.g. $DATA/{info.name})"
        )
    if cfg_data.get("folder"):
        tiled = bool(info.mask_colours)  # a tile folder (rsjax.data.tiles), else a <Class>/<image> tree
        have = ("image", "mask", "scene_id") if tiled else ("image", "label", "scene_id")
        fields = fields if fields is not None else {k: k for k in have if k != "mask"}
        missing = sorted(set(fields.values()) - set(have))
        if missing:
            raise ConfigError(
                f"config.data.folder={cfg_data.folder!r} is a {'tile folder' if tiled else '<Class>/<image> tree'}"
                f" of {info.name!r}: it has {', '.join(have)}, not {', '.join(missing)}"
            )
        if tiled:  # no stored splits: always cut by scene (= tile number)
            out = tiles.read(cfg_data, tiles.split_tiles(cfg_data, split, split_key=split_key))
            keep = folders.subset_indices(len(out["image"]), limit)
            out = {k: v[keep] for k, v in out.items()}
        else:
            images, labels, _ = folders.load_class_folder(
                cfg_data.folder,
                split,
                seed=int(cfg_data.folder_seed),
                cache_dir=cfg_data.cache_dir or None,
                limit=limit,
            )
            out = {"image": images, "label": labels, "scene_id": np.arange(len(labels), dtype=np.int64)}
        return {role: out[key] for role, key in fields.items()}
    source, rows = _split_rows(cfg_data, split, split_key)
    have = source.features()
    defaults = fields is None
    if defaults:
        fields = {k: k for k in ("image", "label", "scene_id") if k in have}
    for role, key in fields.items():
        if key not in have:
            raise DataError(
                f"dataset {source.name!r} has no feature {key!r} (for {role}; config key "
                f"data.{role}_key); its features are {list(have)}"
            )
    keep = rows[folders.subset_indices(len(rows), limit)]
    if not len(keep):
        raise DataError(f"split {split!r} of dataset {source.name!r} is empty")
    out: dict[str, list] = {role: [] for role in fields}
    for s in tqdm(range(0, len(keep), 256), desc=f"{desc} {split}", leave=False):
        for ex in source.read(keep[s : s + 256].tolist()):
            for role, key in fields.items():
                out[role].append(np.asarray(ex[key]))
    arrays = {role: np.stack(v) for role, v in out.items()}
    if defaults:
        arrays.setdefault("label", np.full((len(keep),), -1, np.int32))
        arrays.setdefault("scene_id", keep.astype(np.int64))
    return arrays


def _split_rows(cfg_data, split: str, split_key: str) -> tuple[DataSource, np.ndarray]:
    """The TFDS source of ``split`` and the indices of its records: all records of the stored split,
    or, for a split cut by scene (:mod:`rsjax.data.scenes`), those of the chosen scenes of the
    stored ``train`` split."""
    if not scenes.cuts(cfg_data, split):
        source = open_source(cfg_data, split, split_key=split_key)
        return source, np.arange(len(source))
    source = open_source(cfg_data, scenes.SOURCE_SPLIT, split_key=split_key)
    if "scene_id" not in source.features():
        raise ConfigError(
            f"config.data.test_scenes / val_scenes cut splits by the records' scene_id, which "
            f"dataset {source.name!r} lacks (its features: {list(source.features())})"
        )
    ids = unit_scene_ids(source)
    where = f"split {scenes.SOURCE_SPLIT!r} of dataset {source.name!r}"
    return source, np.flatnonzero(np.isin(ids, scenes.select(cfg_data, split, ids, where=where, split_key=split_key)))


def num_records(cfg_data, split: str) -> int:
    """The number of records of a split (what :func:`read_split` reads without ``limit``): for a
    tile folder its crops (:func:`rsjax.data.tiles.crop_layout`, image headers only)."""
    if cfg_data.get("folder") and registry.data_info(cfg_data).mask_colours:
        return sum(c["rows"] * c["cols"] for c in tiles.crop_layout(cfg_data, split, split_key="data.train_split"))
    if cfg_data.get("folder"):
        if split == "all":
            return sum(len(f) for f in folders.class_folder_files(cfg_data.folder)[1])
        tr, _, te, _, _ = folders.folder_split(cfg_data.folder, seed=int(cfg_data.folder_seed))
        return len(tr if split == "train" else te)
    return len(_split_rows(cfg_data, split, "data.train_split")[1])


def unit_scene_ids(source: DataSource, crops_as_scenes: int = 0) -> np.ndarray:
    """Scene id of every unit (``[len(source) * g * g]``, int64; see module docstring)."""
    g2 = max(1, crops_as_scenes) ** 2
    n = len(source)
    if crops_as_scenes > 0:
        return np.repeat(np.arange(n, dtype=np.int64), g2)
    key = (source.name, source.builder_config, source.data_dir, source.split, n)
    if key not in _SCENE_CACHE:
        if "scene_id" in source.features():
            _SCENE_CACHE[key] = source.column("scene_id")
        else:
            _SCENE_CACHE[key] = np.arange(n, dtype=np.int64)
    return _SCENE_CACHE[key]


# ----------------------------------------------------------------------------------------
# Epoch plans
# ----------------------------------------------------------------------------------------


def batch_layout(
    global_batch_size: int, scenes_per_batch: int, samples_per_scene: int, crops_as_scenes: int
) -> tuple[int, int]:
    """``(S, k)`` of the :class:`EpochPlan` for these ``data.*`` keys (both input paths).

    ``scenes_per_batch = S > 0``: ``(S, samples_per_scene)``. Else ``crops_as_scenes = g > 0``:
    ``(global_batch_size / g^2, g^2)``, i.e. whole images, all their crops. Else ``(0, 1)``:
    plain random batches. Raises ValueError naming the keys when the batch does not fit.
    """
    s, k, g = int(scenes_per_batch or 0), int(samples_per_scene), int(crops_as_scenes or 0)
    if s > 0:
        if s * k != global_batch_size:
            raise ConfigError(
                f"scene-aware batching needs batch_size == data.scenes_per_batch * "
                f"data.samples_per_scene, got {global_batch_size} != {s} * {k}"
            )
        return s, k
    if g > 0:
        if global_batch_size % (g * g):
            raise ConfigError(
                f"data.crops_as_scenes={g} with data.scenes_per_batch=0 takes all {g * g} crops of "
                f"each image: batch_size {global_batch_size} must be a multiple of {g * g}"
            )
        return global_batch_size // (g * g), g * g
    return 0, 1


class EpochPlan:
    """Which units form each global batch of each epoch (pure function of seed and epoch).

    ``plan.batch(b)`` -> int64 ``[global_batch_size]`` unit ids of global batch ``b``.
    """

    def __init__(
        self,
        unit_scenes: np.ndarray,
        global_batch_size: int,
        seed: int,
        scenes_per_batch: int = 0,
        samples_per_scene: int = 1,
    ):
        self.num_units = int(len(unit_scenes))
        self.batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.scenes_per_batch = int(scenes_per_batch)
        self.samples_per_scene = int(samples_per_scene)
        if self.num_units == 0:
            raise DataError("the dataset split is empty")
        if self.scenes_per_batch > 0:
            s, k = self.scenes_per_batch, self.samples_per_scene
            if k < 1:
                raise ConfigError(f"data.samples_per_scene must be >= 1, got {k}")
            if s * k != self.batch_size:
                raise ConfigError(
                    f"scene-aware batching needs batch_size == data.scenes_per_batch * "
                    f"data.samples_per_scene, got {self.batch_size} != {s} * {k}"
                )
            _, inverse, counts = np.unique(unit_scenes, return_inverse=True, return_counts=True)
            self._inverse = inverse.astype(np.int64)
            self._counts = counts.astype(np.int64)
            order = np.argsort(self._inverse, kind="stable")
            self._members = np.split(order, np.cumsum(counts)[:-1])
            if len(counts) < s:
                raise ConfigError(f"data.scenes_per_batch={s} but the split has only {len(counts)} scenes")
            self._groups_per_scene = np.maximum(1, counts // k)
            self.steps_per_epoch = _max_distinct_batches(self._groups_per_scene, s)
        else:
            self.steps_per_epoch = max(1, self.num_units // self.batch_size)
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_lock"] = None
        d["_cache"] = collections.OrderedDict()
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def epoch(self, e: int) -> np.ndarray:
        """``[steps_per_epoch, global_batch_size]`` unit ids of epoch ``e`` (cached, 2 epochs)."""
        with self._lock:
            if e in self._cache:
                self._cache.move_to_end(e)
                return self._cache[e]
        plan = self._scene_epoch(e) if self.scenes_per_batch > 0 else self._plain_epoch(e)
        with self._lock:
            self._cache[e] = plan
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return plan

    def batch(self, b: int) -> np.ndarray:
        e, step = divmod(int(b), self.steps_per_epoch)
        return self.epoch(e)[step]

    def _plain_epoch(self, e: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, e, 1])
        need = self.steps_per_epoch * self.batch_size
        perms = [rng.permutation(self.num_units) for _ in range(-(-need // self.num_units))]
        return np.concatenate(perms)[:need].reshape(self.steps_per_epoch, self.batch_size)

    def _scene_epoch(self, e: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, e, 2])
        s, k, steps = self.scenes_per_batch, self.samples_per_scene, self.steps_per_epoch
        counts, ng = self._counts, self._groups_per_scene
        n_scenes = len(counts)
        # 1. Groups: shuffle every scene's units at once (sort by (scene, random key)) and cut
        #    the first ng * k of them into ng groups of k; groups of a scene are contiguous.
        order = np.lexsort((rng.random(self.num_units), self._inverse))
        unit_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        group_start = np.concatenate([[0], np.cumsum(ng)[:-1]])
        g_scene = np.repeat(np.arange(n_scenes), ng)
        g_idx = np.arange(int(ng.sum())) - group_start[g_scene]
        full = (counts >= k)[g_scene]
        rows = np.empty((len(g_scene), k), np.int64)
        pos = unit_start[g_scene[full]][:, None] + g_idx[full][:, None] * k + np.arange(k)[None]
        rows[full] = order[pos]
        for sc in np.nonzero(counts < k)[0]:  # small scene: fill its one group by repeating
            mem = order[unit_start[sc] : unit_start[sc] + counts[sc]]
            reps = np.concatenate([rng.permutation(mem) for _ in range(-(-k // len(mem)))])
            rows[group_start[sc]] = reps[:k]
        # 2. Batches of s distinct scenes, largest-remaining-first with random tie-breaks:
        #    picking the s scenes with the most groups left keeps every later batch feasible
        #    (so exactly `steps` batches come out), and random picks inside a count bucket mix
        #    scenes well when counts are equal (the common case).
        remaining = np.minimum(ng, steps).tolist()
        used = [0] * n_scenes
        buckets: dict[int, list[int]] = collections.defaultdict(list)
        for sc in rng.permutation(n_scenes).tolist():
            buckets[remaining[sc]].append(sc)
        top = max(remaining)
        draws = iter(rng.random(steps * s).tolist())
        plan = np.empty((steps, s * k), np.int64)
        for t in range(steps):
            chosen = []
            c = top
            while len(chosen) < s:
                while not buckets.get(c):
                    c -= 1
                    if c <= 0:  # cannot happen when steps is feasible (see EpochPlan)
                        raise RuntimeError("scene-aware batching ran out of scenes")
                bucket = buckets[c]
                j = int(next(draws) * len(bucket))
                bucket[j], bucket[-1] = bucket[-1], bucket[j]
                chosen.append(bucket.pop())
            for i, sc in enumerate(chosen):
                plan[t, i * k : (i + 1) * k] = rows[group_start[sc] + used[sc]]
                used[sc] += 1
                remaining[sc] -= 1
                if remaining[sc] > 0:
                    buckets[remaining[sc]].append(sc)
            while top > 0 and not buckets.get(top):
                top -= 1
        return plan[rng.permutation(steps)]


def _max_distinct_batches(groups_per_scene: np.ndarray, s: int) -> int:
    """Largest T such that T batches of s distinct scenes can be drawn from scenes holding
    ``groups_per_scene`` groups each: feasible iff ``sum_i min(n_i, T) >= s * T``
    (monotone in T, so binary search)."""
    ng = np.asarray(groups_per_scene, np.int64)
    lo, hi = 0, int(ng.sum()) // s
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(ng, mid).sum()) >= s * mid:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        raise ConfigError(f"data.scenes_per_batch={s} but the split has only {len(ng)} scenes")
    return lo


# ----------------------------------------------------------------------------------------
# Pretraining batches
# ----------------------------------------------------------------------------------------


def _sub_crop(img: np.ndarray, g: int, sub: int) -> np.ndarray:
    """Sub-crop ``sub`` (row-major) of the ``g x g`` grid of adjacent crops of ``img``."""
    if g <= 1:
        return img
    h, w = img.shape[:2]
    ch, cw = h // g, w // g
    cy, cx = divmod(int(sub), g)
    return img[cy * ch : (cy + 1) * ch, cx * cw : (cx + 1) * cw]


def sub_crops(images: np.ndarray, g: int) -> np.ndarray:
    """Every ``g x g`` adjacent sub-crop of every image of ``images`` ``[N, H, W, C]``: ``[N * g^2,
    H // g, W // g, C]``, image-major, sub-crops row-major (crop ``i * g^2 + j`` is
    :func:`_sub_crop` ``j`` of image ``i``; the remainder of ``H`` / ``W`` is dropped)."""
    n, h, w = images.shape[:3]
    ch, cw = h // g, w // g
    x = images[:, : g * ch, : g * cw].reshape(n, g, ch, g, cw, *images.shape[3:])
    return np.swapaxes(x, 2, 3).reshape(n * g * g, ch, cw, *images.shape[3:])


def check_images(images: np.ndarray, info: registry.DatasetInfo, *, where: str, stacked: bool = False) -> None:
    """Raises ValueError naming ``where`` for pixels rsjax cannot use.

    ``images`` is one image ``[H, W, C]`` or, with ``stacked``, ``[N, H, W, C]`` (the message
    then names the first bad index). Refused: a shape that is not ``[H, W, C]`` with the
    registry's band count; a dtype that is not a real number; float pixels in an
    integer-coded dataset (registry ``scale`` > 1: they would be silently off by that
    factor, e.g. reflectance already divided by 10000); NaN or inf pixels (checked on the
    float32 values that normalization uses; integer pixels are always finite).
    """
    x = np.asarray(images)
    what = f"dataset {info.name!r}: {where}"
    if x.ndim != 3 + bool(stacked) or x.shape[-1] != info.num_bands:
        raise DataError(
            f"{what} has image shape {x.shape}, expected {'[N, ' if stacked else '['}H, W, "
            f"{info.num_bands}] (bands {list(info.bands)})"
        )
    kind = x.dtype.kind
    if kind not in "uif" or (kind == "f" and info.scale != 1):
        expected = "unsigned or signed integers" + (
            " or floats" if info.scale == 1 else f" (raw values are divided by scale={info.scale:g})"
        )
        raise DataError(f"{what} has pixels of dtype {x.dtype}; expected {expected}")
    if kind == "f":
        with np.errstate(over="ignore"):  # float64 beyond float32 range: inf, reported below
            finite = np.isfinite(x.astype(np.float32, copy=False))
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            at = (
                f"index {int(bad[0])}, pixel {tuple(int(i) for i in bad[1:])}"
                if x.ndim == 4
                else f"pixel {tuple(int(i) for i in bad)}"
            )
            raise DataError(f"{what} has {int((~finite).sum())} NaN/inf pixel value(s) ({at})")


def check_label(labels: np.ndarray, info: registry.DatasetInfo, *, where: str) -> None:
    """Raises DataError naming ``where`` and the first bad record for a stored label outside
    ``[0, num_classes)`` (``labels`` ``[N]``, -1 = no label; multi-hot ``[N, K]``: a value other
    than 0 / 1). Datasets without classes are not checked."""
    if info.num_classes <= 0:
        return
    lab = np.asarray(labels)
    if info.multi_label:
        bad = ~np.isin(lab, (0, 1))
        if bad.any():
            raise DataError(
                f"dataset {info.name!r}: {where} has a multi-hot label with values "
                f"{sorted(set(np.unique(lab[bad]).tolist()))[:5]} (record {int(np.argwhere(bad)[0][0])}); "
                f"expected 0 / 1"
            )
    elif lab.ndim == 1:
        bad = (lab < -1) | (lab >= info.num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"dataset {info.name!r}: {where} has label {int(lab[i])} (record {i}), outside [0, "
                f"{info.num_classes}) (classes {list(info.class_names)[:10]})"
            )


def _scalar_label(ex: dict) -> int:
    if "label" not in ex:
        return -1
    lab = np.asarray(ex["label"])
    return int(lab) if lab.ndim == 0 else -1


class _MakeBatch:
    """Global batch index -> this process's slice of that batch (picklable for workers)."""

    def __init__(
        self,
        source: DataSource,
        plan: EpochPlan,
        unit_scenes: np.ndarray,
        info: registry.DatasetInfo,
        recipe: ops.Pipeline,
        out_size: int,
        seed: int,
        crops_as_scenes: int,
        process_index: int,
        local_batch: int,
    ):
        self.source = source
        self.plan = plan
        self.unit_scenes = unit_scenes.astype(np.int32)
        self.info = info
        self.recipe = recipe
        self.out_size = int(out_size)
        self.seed = int(seed)
        self.g = int(crops_as_scenes)
        self.p = int(process_index)
        self.bl = int(local_batch)

    def __call__(self, b: int) -> dict[str, np.ndarray]:
        b = int(b)
        rows = np.arange(self.p * self.bl, (self.p + 1) * self.bl)
        units = self.plan.batch(b)[rows]
        g2 = max(1, self.g) ** 2
        exs = self.source.read(units // g2)
        v1 = np.empty((self.bl, self.out_size, self.out_size, self.info.num_bands), np.float32)
        v2 = np.empty_like(v1)
        labels = np.empty((self.bl,), np.int32)
        for i, (ex, unit, row) in enumerate(zip(exs, units, rows)):
            img = np.asarray(ex["image"])
            if img.ndim != 3 or img.shape[-1] != self.info.num_bands or img.dtype.kind != "u":
                check_images(img, self.info, where=f"record {int(unit // g2)} of split {self.source.split!r}")
            img = _sub_crop(img, self.g, unit % g2)
            x = registry.to_scaled(img, self.info)
            rng = np.random.default_rng([self.seed, b, int(row)])
            a, c = augment.two_views(x, rng, self.recipe, self.out_size)
            v1[i] = registry.standardize(a, self.info)
            v2[i] = registry.standardize(c, self.info)
            labels[i] = _scalar_label(ex)
        return {"view1": v1, "view2": v2, "scene_id": self.unit_scenes[units], "label": labels}


class PretrainIterator:
    """Checkpointable iterator over this process's slices of the global pretraining batches.

    ``get_state()`` -> bytes (UTF-8 JSON); ``set_state(bytes | str | dict)`` resumes exactly.
    Also usable with ``grain.checkpoint.CheckpointSave/CheckpointRestore`` (Orbax).
    """

    def __init__(
        self,
        batches: grain.MapDataset,
        *,
        fingerprint: dict,
        num_threads: int,
        prefetch: int,
        num_workers: int,
        steps_per_epoch: int,
    ):
        self._batches = batches
        self._fingerprint = fingerprint
        self._num_threads = num_threads
        self._prefetch = prefetch
        self._num_workers = num_workers
        self.steps_per_epoch = steps_per_epoch
        self._next = 0
        self._it: Optional[Iterator] = None

    def _start(self):
        ds = self._batches[self._next :] if self._next else self._batches
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=self._num_threads, prefetch_buffer_size=self._prefetch)
        )
        if self._num_workers > 0:
            # grain's worker processes read absl flags; outside an absl app (tests, notebooks)
            # they have not been parsed yet: use their defaults.
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self._num_workers, per_worker_buffer_size=self._prefetch)
            )
        self._it = iter(it_ds)

    def start_prefetch(self) -> None:
        """Starts reading ahead now (grain's checkpoint handler calls this after restore)."""
        if self._it is None:
            self._start()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._start()
        batch = next(self._it)  # StopIteration ends finite (num_epochs) streams
        if self._num_workers > 0:
            # Worker output lives in grain SharedMemoryArrays; hand out plain arrays so the
            # shared memory is released now rather than whenever the caller drops the batch.
            batch = {k: np.array(v) for k, v in batch.items()}
        self._next += 1
        return batch

    @property
    def next_batch(self) -> int:
        """Global index of the batch the next ``next()`` returns."""
        return self._next

    def get_state(self) -> bytes:
        return json.dumps(
            {"format": STATE_FORMAT, "next_batch": self._next, "fingerprint": self._fingerprint}, sort_keys=True
        ).encode("utf-8")

    def set_state(self, state: bytes | str | dict) -> None:
        if isinstance(state, (bytes, bytearray)):
            state = state.decode("utf-8")
        if isinstance(state, str):
            state = json.loads(state)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} iterator state: {state!r:.200}")
        check_fingerprint(state, self._fingerprint)
        self.close()
        self._next = int(state["next_batch"])

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def make_pretrain_iterator(
    cfg_data: Any,
    *,
    global_batch_size: int,
    seed: int,
    image_size: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: Optional[int] = None,
) -> PretrainIterator:
    """Two-view pretraining batches for this process (see the module docstring).

    Args:
      cfg_data: the ``config.data`` block (:func:`default_data_config` lists its fields).
      global_batch_size: rows of one global batch (all processes together).
      seed: data seed: plans, shuffling and augmentations derive from it.
      image_size: side of each view in pixels.
      process_index, process_count: this process and the number of processes
        (``jax.process_index()``, ``jax.process_count()``).
      num_epochs: None = infinite; else stop after ``num_epochs * steps_per_epoch`` batches.

    Returns:
      :class:`PretrainIterator` yielding ``{"view1", "view2", "scene_id", "label"}``.
    """
    if global_batch_size % process_count:
        raise ConfigError(f"batch_size {global_batch_size} is not divisible by the number of processes {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    name = cfg_data.name
    info = registry.data_info(cfg_data)
    source = open_source(cfg_data, cfg_data.train_split)
    g = int(cfg_data.crops_as_scenes or 0)
    unit_scenes = unit_scene_ids(source, g)
    spb = int(cfg_data.scenes_per_batch or 0)
    k = int(cfg_data.samples_per_scene)
    plan = EpochPlan(unit_scenes, global_batch_size, seed, *batch_layout(global_batch_size, spb, k, g))
    # The view recipe (config.data.augment), numpy backend: applied per example.
    recipe = ops.view_recipe(cfg_data.augment, "numpy")
    fn = _MakeBatch(
        source,
        plan,
        unit_scenes,
        info,
        recipe,
        int(image_size),
        seed,
        g,
        process_index,
        global_batch_size // process_count,
    )
    length = sys.maxsize if num_epochs is None else int(num_epochs) * plan.steps_per_epoch
    batches = grain.MapDataset.range(length).map(fn)
    fingerprint = {
        "dataset": name,
        "builder_config": source.builder_config,
        "split": source.split,
        "num_units": plan.num_units,
        "global_batch_size": int(global_batch_size),
        "seed": int(seed),
        "image_size": int(image_size),
        "scenes_per_batch": spb,
        "samples_per_scene": k if spb else None,
        "crops_as_scenes": g,
    }
    return PretrainIterator(
        batches,
        fingerprint=fingerprint,
        num_threads=int(cfg_data.num_threads),
        prefetch=max(1, int(cfg_data.prefetch_batches)),
        num_workers=int(cfg_data.num_workers or 0),
        steps_per_epoch=plan.steps_per_epoch,
    )


# ----------------------------------------------------------------------------------------
# Evaluation arrays
# ----------------------------------------------------------------------------------------

#: The evaluation inputs' recipe (``config.data.pp_eval``): the registry's normalisation, then
#: the whole image to ``data.image_size`` (the stored side when that is 0).
DEFAULT_PP_EVAL = "normalize|resize"


def prepare(
    images: np.ndarray,
    info: registry.DatasetInfo,
    recipe: str = DEFAULT_PP_EVAL,
    *,
    image_size: int | None = None,
    key: str = "data.pp_eval",
    what: str = "",
) -> np.ndarray:
    """float32 ``[N, S, S, C]``: the deterministic op recipe ``recipe`` (``config.data.pp_eval``)
    applied to every raw image of ``images`` ``[N, H, W, C]`` with ``ctx.out_size = image_size``
    (None or 0: the stored side). Warns when that upsamples (``registry.warn_if_upsampling``)."""
    size = int(image_size or 0) or int(images.shape[1])
    registry.warn_if_upsampling(size, images.shape[1:3], what=what or f"dataset {info.name!r}")
    pipe = ops.prep_recipe(recipe, "numpy", key=key)
    ctx = ops.Context(out_size=size, info=info)
    return np.stack([pipe.image(im, None, ctx) for im in images]).astype(np.float32, copy=False)


def eval_arrays(
    cfg_data: Any,
    split: str,
    *,
    limit: Optional[int] = None,
    image_size: Optional[int] = None,
    split_key: str = "eval.train_split / eval.test_split",
) -> tuple[np.ndarray, np.ndarray]:
    """A split as evaluation inputs (kNN, linear probe, fine-tune): :func:`read_split`, the
    pixels and labels checked, then the ``data.pp_eval`` recipe (:func:`prepare`).

    Returns ``images`` float32 ``[N, S, S, C]`` and ``labels`` int32 ``[N]`` (``[N, num_classes]``
    multi-hot for multi-label data; -1 when the dataset has no label).
    """
    info = registry.data_info(cfg_data)
    arrays = read_split(cfg_data, split, limit=limit, split_key=split_key)
    raw, labels = arrays["image"], arrays["label"]
    check_images(raw, info, where=f"split {split!r}", stacked=True)
    check_label(labels, info, where=f"split {split!r}")
    x = prepare(
        raw,
        info,
        cfg_data.get("pp_eval") or DEFAULT_PP_EVAL,
        image_size=image_size,
        what=f"split {split!r} of {info.name!r}",
    )
    return x, labels.astype(np.int32)


def check_fingerprint(state: dict, current: dict) -> None:
    """Refuses an iterator state saved with other data settings (shared by both input paths)."""
    saved = state.get("fingerprint", {})
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise ConfigError(
                f"cannot resume data iterator: {key} was {saved[key]!r} when the state was saved but is {value!r} now"
            )
