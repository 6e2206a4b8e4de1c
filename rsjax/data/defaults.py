"""The ``config.data`` block: its defaults and its completeness check (importable without grain
or TFDS).

Every config gets its complete ``config.data`` from one constructor
(:func:`configs.common.data_config`, on top of :func:`default_data_config`) and the library
reads the keys directly (``config.data.crop_size``, never through a ``.get`` with a fallback):
there is no second place where a default lives. Old workdirs' configs are completed once, when
read (:func:`rsjax.workdir.complete_config`); a block built by hand that lacks keys, or carries
keys nobody reads, is refused by :func:`check_complete` before a job writes anything.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from rsjax.data import ops
from rsjax.errors import ConfigError

# Former data keys -> their name now (workdirs are converted when read: rsjax.workdir.complete_config).
RENAMED = {"test_tiles": "test_scenes", "val_tiles": "val_scenes"}


def default_data_config() -> ml_collections.ConfigDict:
    """The complete ``config.data`` block at its defaults, locked (setting a key it lacks raises).

    Both input paths -- the host grain pipeline (``rsjax.data.pipeline``) and the GPU-resident
    path (``device_resident=True``: ``rsjax.data.device_data`` / ``device_augment``) -- honour
    every batching and augmentation key below with the same meaning (the same epoch plans,
    the same photometric definitions). Path-specific keys: ``num_workers`` / ``num_threads`` /
    ``prefetch_batches`` (host only; ``num_workers > 0`` with ``device_resident`` is refused)
    and ``folder`` / ``folder_seed`` / ``cache_dir`` (device only among the pretraining paths;
    ``folder`` without ``device_resident`` is refused). ``rsjax.train.validate_config`` refuses keys no path reads
    and out-of-range values before anything is written.

    Fields:
      name: registry / TFDS dataset name (``rs_synthetic`` = embedded default, built on use).
      builder_config: TFDS builder config (``default``, ``tiny``, ...); None/'' = builder default.
      normalization: ``registry`` (per-band standardization with the registry's scale / mean /
        std) or ``scale:S`` (``x_raw / S`` only, e.g. ``scale:10000`` for imported SSL4EO-S12
        weights); see ``rsjax.data.registry.data_info``.
      data_dir: TFDS data dir; None = ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
      train_split: the split a job trains on (pretraining, noisy-label pretraining); the
        evaluation splits are ``eval.train_split`` / ``eval.test_split`` of the job's config.
      auto_build: build self-contained datasets (rs_synthetic) into data_dir when missing.
      scenes_per_batch: 0 = plain random batches; S > 0 = S distinct scenes per global batch,
        laid out scene by scene (scene id: the records' ``scene_id`` feature, else the record).
      samples_per_scene: units per scene in scene-aware batches (k); batch = S * k.
      crops_as_scenes: g > 0 cuts each image into g x g adjacent crops sharing a scene id;
        with scenes_per_batch = 0 each image brings all its g x g crops (batch / g^2 scenes).
      augment: the pretraining view recipe, an op string (``rsjax.data.ops``), e.g.
        ``"rrc(0.2, 1.0)|flip_rot|jitter(0.4, p=0.8)|gray(0.2)|blur(0.5, sigma=(0.1, 1.0))"``:
        random resized crop (area fraction range) -> the 8 flips / 90-degree rotations ->
        band-agnostic brightness / contrast (strength, probability; optional ``band=`` per-band
        gain and ``saturation=``) -> grayscale (probability) -> Gaussian blur (probability,
        sigma range in output pixels). Both input paths build their views from it (host: numpy
        backend per example; device: jax backend in the step); an op the chosen path lacks is
        refused. It replaces the former keys crop_scale_min/max, flip_rot, jitter_strength,
        jitter_prob, band_jitter, saturation, gray_prob, blur_prob, blur_sigma_min/max (one
        meaning per key); workdirs whose config still sets them have them folded into
        ``augment`` once, when read (``rsjax.workdir.complete_config``); a live config that sets
        them is refused by :func:`check_complete`, naming the equivalent ``augment``.
      pp_eval: the evaluation inputs' recipe (kNN, linear probe, fine-tune; deterministic ops
        only, ``rsjax.data.ops.prep_recipe``): ``"normalize|resize"`` = the registry's
        normalisation, then the whole image to ``image_size`` (the evaluation's size; the
        stored side where a job evaluates at the stored size).
      pp_dense: the dense inputs' recipe (segmentation, change detection, noisy-label
        pretraining: every image of a training batch on the host, the test images on the
        device; deterministic per-pixel ops only, ``rsjax.data.ops.dense_recipe``, so masks keep
        the images' grid): ``"normalize"`` = the registry's normalisation.
      device_resident: hold the decoded split in device memory and augment inside the
        jitted step (rsjax.data.device_data / device_augment) instead of the grain pipeline.
      folder: a ``<Class>/<image>`` tree read directly instead of the TFDS dataset ``name``
        (the GPU-resident pretraining path and eval_classification; '' = the TFDS dataset), with
        the builders' image reader and the project's seeded 80 / 20 class split
        (``rsjax.data.folders``); folder_seed: that split's seed; cache_dir: .npz cache of the
        decoded arrays. (``--manual_dir`` is something else: the original files of a TFDS
        build, a flag of ``python -m rsjax.data.build``, not a config key.) For a segmentation
        dataset whose registry entry has a colour table (``dubai_aerial_seg``), ``folder`` is its
        tree of tile folders (``<Tile N>/images/`` + ``masks/``), read by the dense jobs
        (``rsjax.data.tiles.read``) and split by tile (scene = tile number):
      test_scenes, val_scenes: scene ids (the records' ``scene_id``: an OSCD city, a tile
        number, ``Tile 3`` -> 3) that form the run-time ``test`` and ``validation`` splits;
        ``train`` is every other scene (``rsjax.data.scenes``, applied by
        ``rsjax.data.pipeline.read_split``: cut from the stored ``train`` split, or a tile
        folder's tiles). () = none: splits as stored. Read by every path that reads through
        ``read_split`` (the dense and evaluation jobs, device-resident pretraining).
      pretrain_images: features read as separate pretraining images (device-resident path), e.g.
        ``("image_a", "image_b")``: both dates of a change pair; the images of one record share
        its scene (with ``crops_as_scenes`` the record itself, else its ``scene_id``). () = the
        ``image`` feature.
      num_workers: grain worker processes (0 = in-process).
      num_threads: grain reader threads per process; prefetch_batches: batches read ahead.

    Job keys (read by the jobs named; the input paths above ignore them):
      image_size: side in px of the images / views the job works on (all jobs).
      image_key, mask_key: feature names of the image and the mask (segmentation, multi-label);
        how stored masks mark "no label" is the dataset's registry entry
        (``DatasetInfo.mask_ignore_value``), not a config key.
      image_a_key, image_b_key, change_key: the two dates and the change mask (change detection).
      crop_size: random training crop side of the dense jobs; 0 = whole images.
      class_names: () = the registry's class names (segmentation reports).
      multilabel_from_mask: multi-label targets = classes present in mask_key (eval_multilabel).
      max_train: examples read of the pretraining split (noisy_label; 0 = all).
    """
    c = ml_collections.ConfigDict()
    c.name = "rs_synthetic"
    c.builder_config = ml_collections.config_dict.placeholder(str)
    c.builder_config = "default"
    c.normalization = "registry"
    c.data_dir = ml_collections.config_dict.placeholder(str)
    c.train_split = "train"
    c.auto_build = True
    c.scenes_per_batch = 0
    c.samples_per_scene = 2
    c.crops_as_scenes = 0
    c.augment = "rrc(0.2, 1.0)|flip_rot|jitter(0.4, p=0.8)|blur(0.5, sigma=(0.1, 1.0))"  # ops.DEFAULT_AUGMENT
    c.pp_eval = "normalize|resize"  # pipeline.DEFAULT_PP_EVAL
    c.pp_dense = "normalize"  # ops.DEFAULT_PP_DENSE
    c.device_resident = False
    c.folder = ""
    c.folder_seed = 0
    c.cache_dir = ""
    c.test_scenes = ()
    c.val_scenes = ()
    c.pretrain_images = ()
    c.num_workers = 0
    c.num_threads = 2
    c.prefetch_batches = 2
    # The keys the evaluation, dense and noisy-label jobs read (one complete block for every
    # job; configs set them through configs.common.data_config).
    c.image_size = 32
    c.image_key = "image"
    c.mask_key = "mask"
    c.image_a_key = "image_a"
    c.image_b_key = "image_b"
    c.change_key = "change"
    c.crop_size = 0
    c.class_names = ()
    c.multilabel_from_mask = False
    c.max_train = 0
    c.lock()
    return c


def check_complete(data: Any, where: str = "config.data") -> None:
    """Refuses a ``config.data`` block whose keys are not exactly those of
    :func:`default_data_config` (ConfigError naming the keys), so that the code can read every
    key directly:

    * a key nobody reads (a typo, or a key of another version) is named with the known keys;
    * a former augmentation key (``crop_scale_min`` ... ``blur_sigma_max``) is named with the
      ``data.augment`` recipe it amounts to (``rsjax.data.ops.augment_spec``; values out of
      range are named as such);
    * missing keys are named, with where a complete block comes from.
    """
    given = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    known = default_data_config().keys()
    legacy = sorted(k for k in given if k in ops.LEGACY_KEYS)
    if legacy:
        spec = ops.augment_spec(given, key=f"{where.split('.', 1)[-1]}.augment")  # raises for bad values
        raise ConfigError(
            f"{', '.join(f'{where}.{k}' for k in legacy)}: former augmentation key(s), now spelt in one "
            f"op string: "
            f"set {where}.augment={spec!r} instead (rsjax.data.ops; workdirs written with them are "
            f"converted when read)"
        )
    renamed = sorted(k for k in given if k in RENAMED)
    if renamed:
        raise ConfigError(
            ", ".join(f"{where}.{k}: renamed {where}.{RENAMED[k]}" for k in renamed)
            + " (one rule for every scene: rsjax.data.scenes; workdirs written with the former "
            "name are converted when read)"
        )
    for key in given:
        if key not in known:
            raise ConfigError(
                f"{where}.{key}: no input path reads this key (the host pipeline, "
                f"data.device_resident=True, nor any job); known keys: {sorted(known)}"
            )
    missing = [k for k in known if k not in given]
    if missing:
        raise ConfigError(
            f"{where} lacks the key(s) {', '.join(missing)}: build the block with "
            f"configs.common.data_config(...) (every key of "
            f"rsjax.data.defaults.default_data_config, at its default unless given)"
        )
