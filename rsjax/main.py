"""Command-line entry point: ``python -m rsjax.main --config=configs/<exp>.py[:variant] --workdir=DIR``.

Thin by design (as google/flax examples): parse flags, hand the config to one library
function chosen by ``config.job`` (default ``pretrain``), report errors in one line.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures.")
flags.mark_flags_as_required(["config", "workdir"])

# config.job -> "module:function(config, workdir)". Modules are imported lazily.
JOBS = {
    "pretrain": "rsjax.train:train_and_evaluate",
    "eval_classification": "rsjax.evaluate.classification_job:run",
    "eval_multilabel": "rsjax.evaluate.multilabel_job:run",
    "change_detection": "rsjax.evaluate.change_detection:run",
    "segmentation": "rsjax.evaluate.segmentation:run",
    "noisy_label": "rsjax.noisy_label:run",
    "noisy_label_study": "rsjax.noisy_label:run_study",
    "study_eurosat": "rsjax.study:run",
}


def run(config, workdir: str):
    """Runs the job named by ``config.job`` (default ``pretrain``)."""
    import importlib

    job = config.get("job", "pretrain")
    if job not in JOBS:
        raise ValueError(f"config.job={job!r} is unknown; known jobs: {sorted(JOBS)}")
    module, fn = JOBS[job].split(":")
    return getattr(importlib.import_module(module), fn)(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # quiet by default; --verbosity=N / -v N as given
        logging.set_verbosity(logging.WARNING)
    from rsjax.train import NonFiniteError
    from rsjax.workdir import ConfigMismatchError

    try:
        run(_CONFIG.value, FLAGS.workdir)
    except (ConfigMismatchError, NonFiniteError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"rsjax: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
