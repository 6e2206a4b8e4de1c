"""Command-line entry point: ``python -m rsjax.main --config=configs/<exp>.py[:variant] --workdir=DIR``.

Thin by design (as google/flax examples): parse flags, hand the config to one library
function chosen by ``config.job`` (default ``pretrain``), report errors in one line.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures.")
flags.mark_flags_as_required(["config", "workdir"])

def run(config, workdir: str):
    """Runs the job named by ``config.job`` (default ``pretrain``): ``rsjax.jobs.<job>.run``."""
    from rsjax import jobs

    return jobs.get(config.get("job", "pretrain"))(config, workdir)


def main(argv):
    """Runs the job; an :class:`rsjax.errors.RsjaxError` is printed in one line (exit 2) by
    :func:`rsjax.errors.run_cli`, anything else keeps its traceback (a bug to report)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # quiet by default; --verbosity=N / -v N as given
        logging.set_verbosity(logging.WARNING)
    run(_CONFIG.value, FLAGS.workdir)


if __name__ == "__main__":
    from rsjax.errors import run_cli

    run_cli(main, "rsjax", _CONFIG)
