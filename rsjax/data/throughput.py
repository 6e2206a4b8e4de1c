"""Measure single-process throughput of the two-view pretraining pipeline.

    python -m rsjax.data.throughput [--data_dir=DIR] [--config=default] [--image_size=64]
        [--batch_size=256] [--batches=20] [--num_threads=2] [--num_workers=0]
        [--scenes_per_batch=0] [--samples_per_scene=2] [--crops_as_scenes=0]

    # the two-view 64 px pipeline on EuroSAT RGB (built from --manual_dir when missing):
    python -m rsjax.data.throughput --preset=eurosat_rgb --data_dir=DIR \
        [--manual_dir=../shared/data/eurosat_rgb]

Builds ``rs_synthetic`` on first use (other datasets: from ``--manual_dir`` when given and not
built yet). Prints images per second (one image = one example with its two views) after a
warm-up batch; nothing is asserted.
"""

from __future__ import annotations

import time

from absl import app, flags

from rsjax.data import build, pipeline

# Named measurement setups: flag values applied unless the flag is given on the command line.
PRESETS = {
    # EuroSAT RGB, two 64 px views of each 64 px image (the SwiMDiff / SimCLR setting).
    "eurosat_rgb": {"name": "eurosat_rgb", "config": "default", "image_size": 64},
    # EuroSAT RGB with every image cut into 2 x 2 crops that form a scene, 4 per scene.
    "eurosat_rgb_scenes": {
        "name": "eurosat_rgb",
        "config": "default",
        "image_size": 64,
        "crops_as_scenes": 2,
        "scenes_per_batch": 64,
        "samples_per_scene": 4,
    },
}


def _define_flags():
    """Flags exist only when this module runs as a program, so importing it (tests) never
    clashes with other entry points' flags (``--config`` of ``rsjax.main``)."""
    global \
        _DATA_DIR, \
        _NAME, \
        _CONFIG, \
        _IMAGE_SIZE, \
        _BATCH, \
        _BATCHES, \
        _THREADS, \
        _WORKERS, \
        _SPB, \
        _SPS, \
        _CAS, \
        _MANUAL, \
        _PRESET
    _DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
    _NAME = flags.DEFINE_string("name", "rs_synthetic", "Dataset name.")
    _CONFIG = flags.DEFINE_string("config", "default", "Builder config.")
    _IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "View size in pixels.")
    _BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch size.")
    _BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches.")
    _THREADS = flags.DEFINE_integer("num_threads", 2, "grain reader threads.")
    _WORKERS = flags.DEFINE_integer("num_workers", 0, "grain worker processes.")
    _SPB = flags.DEFINE_integer("scenes_per_batch", 0, "Scene-aware batching (0 = off).")
    _SPS = flags.DEFINE_integer("samples_per_scene", 2, "Samples per scene.")
    _CAS = flags.DEFINE_integer("crops_as_scenes", 0, "Cut images into g x g crops as scenes.")
    _MANUAL = flags.DEFINE_string(
        "manual_dir", None, "Original files: build the dataset from them first when it is not built in --data_dir."
    )
    _PRESET = flags.DEFINE_enum(
        "preset", None, sorted(PRESETS), "Named setup (see PRESETS); flags given explicitly override it."
    )


def measure(cfg, *, batch_size: int, image_size: int, batches: int) -> dict:
    """Returns ``{"images_per_s", "batches_per_s", "first_batch_s"}`` for one process."""
    t0 = time.perf_counter()
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=batch_size, seed=0, image_size=image_size)
    next(it)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t1
    it.close()
    return {"images_per_s": batches * batch_size / dt, "batches_per_s": batches / dt, "first_batch_s": first}


def _value(flag, preset: dict, key: str):
    """The flag's value, or the preset's when the flag was not given explicitly."""
    if key in preset and not flags.FLAGS[flag.name].present:
        return preset[key]
    return flag.value


def main(argv):
    del argv
    preset = PRESETS[_PRESET.value] if _PRESET.value else {}
    cfg = pipeline.default_data_config()
    cfg.name = _value(_NAME, preset, "name")
    cfg.builder_config = _value(_CONFIG, preset, "config")
    cfg.data_dir = _DATA_DIR.value
    cfg.num_threads = _THREADS.value
    cfg.num_workers = _WORKERS.value
    cfg.scenes_per_batch = _value(_SPB, preset, "scenes_per_batch")
    cfg.samples_per_scene = _value(_SPS, preset, "samples_per_scene")
    cfg.crops_as_scenes = _value(_CAS, preset, "crops_as_scenes")
    image_size = _value(_IMAGE_SIZE, preset, "image_size")
    if _MANUAL.value:
        build.build_dataset(cfg.name, cfg.data_dir, _MANUAL.value, cfg.builder_config)
    r = measure(cfg, batch_size=_BATCH.value, image_size=image_size, batches=_BATCHES.value)
    extra = (
        f", crops_as_scenes {cfg.crops_as_scenes}, {cfg.scenes_per_batch} scenes x {cfg.samples_per_scene}"
        if cfg.scenes_per_batch
        else ""
    )
    print(
        f"{cfg.name}/{cfg.builder_config} two views at {image_size} px, batch "
        f"{_BATCH.value}, threads {_THREADS.value}, workers {_WORKERS.value}{extra}: "
        f"{r['images_per_s']:.0f} images/s ({r['batches_per_s']:.2f} batches/s; first batch "
        f"incl. setup {r['first_batch_s']:.2f} s)"
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
