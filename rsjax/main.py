"""Command-line entry point: ``python -m rsjax.main --config=configs/<exp>.py[:variant] --workdir=DIR``.

Thin by design (as google/flax examples): parse flags, hand the config to one library
function chosen by ``config.job`` (default ``pretrain``), report errors in one line.
"""

from __future__ import annotations

import signal

from absl import app, flags, logging
from ml_collections import config_flags

from rsjax import jobs
from rsjax.train import PREEMPTED_EXIT_CODE

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:variant]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str):
    """Runs the job named by ``config.job`` (default ``pretrain``): ``rsjax.jobs.<job>.run``."""
    return jobs.get(config.get("job", "pretrain"))(config, workdir)


def run_stoppable(config, workdir: str):
    """:func:`run` with SIGTERM / SIGINT turned into exit 75 outside the training loop (the final
    evaluation, reading data): nothing is lost there (the last checkpoint is complete) and a
    scheduler's signal must not be ignored for minutes. The loop installs its own handler while
    it trains (finish the step, checkpoint, exit 75) and gives this one back."""

    def stop(signum, frame):
        del frame
        print(
            f"Stopped by signal {signum} outside training (evaluation or data preparation); the last "
            f"checkpoint is complete. Rerun the same command to continue.",
            flush=True,
        )
        raise SystemExit(PREEMPTED_EXIT_CODE)

    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, stop)
        except ValueError:  # not in the main thread
            pass
    try:
        return run(config, workdir)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(argv):
    """Runs the job; an :class:`rsjax.errors.RsjaxError` is printed in one line (exit 2) by
    :func:`rsjax.errors.run_cli`, anything else keeps its traceback (a bug to report)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # quiet by default; --verbosity=N / -v N as given
        logging.set_verbosity(logging.WARNING)
    run_stoppable(_CONFIG.value, FLAGS.workdir)


if __name__ == "__main__":
    from rsjax.errors import run_cli

    run_cli(main, "rsjax", _CONFIG)
