"""Defaults of the ``config.data`` block (importable without grain or TFDS)."""

from __future__ import annotations

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults of the ``config.data`` block the pipelines read.

    Both input paths -- the host grain pipeline (``rsjax.data.pipeline``) and the GPU-resident
    path (``device_resident=True``: ``rsjax.data.device_data`` / ``device_augment``) -- honour
    every batching and augmentation key below with the same meaning (the same epoch plans,
    the same photometric definitions). Path-specific keys: ``num_workers`` / ``num_threads`` /
    ``prefetch_batches`` (host only; ``num_workers > 0`` with ``device_resident`` is refused)
    and ``manual_dir`` / ``split_seed`` / ``cache_dir`` (device only; ``manual_dir`` without
    ``device_resident`` is refused). ``rsjax.train.validate_config`` refuses keys no path reads
    and out-of-range values before anything is written.

    Fields:
      name: registry / TFDS dataset name (``rs_synthetic`` = embedded default, built on use).
      builder_config: TFDS builder config (``default``, ``tiny``, ...); None/'' = builder default.
      normalization: ``registry`` (per-band standardization with the registry's scale / mean /
        std) or ``scale:S`` (``x_raw / S`` only, e.g. ``scale:10000`` for imported SSL4EO-S12
        weights); see ``rsjax.data.registry.data_info``.
      data_dir: TFDS data dir; None = ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
      train_split, eval_split: TFDS split names for pretraining and evaluation.
      auto_build: build self-contained datasets (rs_synthetic) into data_dir when missing.
      scenes_per_batch: 0 = plain random batches; S > 0 = S distinct scenes per global batch,
        laid out scene by scene (scene id: the records' ``scene_id`` feature, else the record).
      samples_per_scene: units per scene in scene-aware batches (k); batch = S * k.
      crops_as_scenes: g > 0 cuts each image into g x g adjacent crops sharing a scene id;
        with scenes_per_batch = 0 each image brings all its g x g crops (batch / g^2 scenes).
      crop_scale_min, crop_scale_max: area range of the random resized crop.
      flip_rot: random flips and 90-degree rotations.
      jitter_strength, jitter_prob, band_jitter: brightness/contrast (all bands alike) and
        optional per-band gain.
      blur_prob, blur_sigma_min, blur_sigma_max: Gaussian blur (sigma in output pixels).
      saturation, gray_prob: band-agnostic saturation (``sat ~ U(1 - saturation, 1 +
        saturation)`` about the per-pixel band mean, gated by jitter_prob) and grayscale (all
        bands -> their mean, with probability gray_prob).
      device_resident: hold the decoded split in device memory and augment inside the
        jitted step (rsjax.data.device_data / device_augment) instead of the grain pipeline.
      manual_dir: read the original class folder directly (device path, EuroSAT-style);
        split_seed: its stratified split seed; cache_dir: .npz cache of the decoded arrays.
      num_workers: grain worker processes (0 = in-process).
      num_threads: grain reader threads per process; prefetch_batches: batches read ahead.
    """
    c = ml_collections.ConfigDict()
    c.name = "rs_synthetic"
    c.builder_config = ml_collections.config_dict.placeholder(str)
    c.builder_config = "default"
    c.normalization = "registry"
    c.data_dir = ml_collections.config_dict.placeholder(str)
    c.train_split = "train"
    c.eval_split = "test"
    c.auto_build = True
    c.scenes_per_batch = 0
    c.samples_per_scene = 2
    c.crops_as_scenes = 0
    c.crop_scale_min = 0.2
    c.crop_scale_max = 1.0
    c.flip_rot = True
    c.jitter_strength = 0.4
    c.jitter_prob = 0.8
    c.band_jitter = 0.0
    c.blur_prob = 0.5
    c.blur_sigma_min = 0.1
    c.blur_sigma_max = 1.0
    c.saturation = 0.0
    c.gray_prob = 0.0
    c.device_resident = False
    c.manual_dir = ""
    c.split_seed = 0
    c.cache_dir = ""
    c.num_workers = 0
    c.num_threads = 2
    c.prefetch_batches = 2
    return c
