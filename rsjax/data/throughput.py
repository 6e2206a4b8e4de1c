"""Measure single-process throughput of the two-view pretraining pipeline.

    python -m rsjax.data.throughput [--data_dir=DIR] [--config=default] [--image_size=64]
        [--batch_size=256] [--batches=20] [--num_threads=2] [--num_workers=0]
        [--scenes_per_batch=0] [--samples_per_scene=2]

Builds ``rs_synthetic`` on first use. Prints images per second (one image = one example with
its two views) after a warm-up batch; nothing is asserted.
"""

from __future__ import annotations

import time

from absl import app, flags

from rsjax.data import pipeline

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


def measure(cfg, *, batch_size: int, image_size: int, batches: int) -> dict:
    """Returns ``{"images_per_s", "batches_per_s", "first_batch_s"}`` for one process."""
    t0 = time.perf_counter()
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=batch_size, seed=0,
                                         image_size=image_size)
    next(it)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t1
    it.close()
    return {"images_per_s": batches * batch_size / dt, "batches_per_s": batches / dt,
            "first_batch_s": first}


def main(argv):
    del argv
    cfg = pipeline.default_data_config()
    cfg.name = _NAME.value
    cfg.builder_config = _CONFIG.value
    cfg.data_dir = _DATA_DIR.value
    cfg.num_threads = _THREADS.value
    cfg.num_workers = _WORKERS.value
    cfg.scenes_per_batch = _SPB.value
    cfg.samples_per_scene = _SPS.value
    r = measure(cfg, batch_size=_BATCH.value, image_size=_IMAGE_SIZE.value,
                batches=_BATCHES.value)
    print(f"{cfg.name}/{cfg.builder_config} two views at {_IMAGE_SIZE.value} px, batch "
          f"{_BATCH.value}, threads {_THREADS.value}, workers {_WORKERS.value}: "
          f"{r['images_per_s']:.0f} images/s ({r['batches_per_s']:.2f} batches/s; first batch "
          f"incl. setup {r['first_batch_s']:.2f} s)")


if __name__ == "__main__":
    app.run(main)
