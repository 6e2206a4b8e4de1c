"""``python tests/_fault_worker.py --config=... --workdir=...``: ``python -m rsjax.main`` with
test instrumentation switched on by environment variables (used by test_reliability.py and
test_multihost.py; not collected by pytest).

* ``RSJAX_TEST_AUDIT=DIR``: append to ``DIR/reads_<process>.jsonl`` the record indices of every
  ``DataSource.read`` (which records this process reads), and to ``DIR/writes_<process>.txt``
  every file this process opens for writing inside ``RSJAX_TEST_WORKDIR`` outside
  ``checkpoints/`` (only process 0 may write metrics, config, pictures).
* ``RSJAX_TEST_HANG_IN_SAVE=STEP``: when Orbax is about to finalize (rename) the checkpoint of
  step STEP, create ``RSJAX_TEST_WORKDIR/.in_save`` and hang, so a test can ``kill -9`` the
  process while the checkpoint is half written.
"""

import builtins
import json
import os
import sys
import time

_open = builtins.open
_process = os.environ.get("JAX_PROCESS_ID", "0")
_workdir = os.path.realpath(os.environ.get("RSJAX_TEST_WORKDIR", "/nonexistent"))

if os.environ.get("RSJAX_TEST_AUDIT"):
    audit = os.environ["RSJAX_TEST_AUDIT"]
    from rsjax.data import pipeline

    _read = pipeline.DataSource.read

    def _audited_read(self, indices):
        idx = [int(i) for i in indices]
        with _open(os.path.join(audit, f"reads_{_process}.jsonl"), "a") as f:
            f.write(json.dumps(idx) + "\n")
        return _read(self, idx)

    pipeline.DataSource.read = _audited_read
    ckpt_prefix = os.path.join(_workdir, "checkpoints") + os.sep

    def _audited_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            path = os.path.realpath(os.fsdecode(file))
            if path.startswith(_workdir + os.sep) and not path.startswith(ckpt_prefix):
                with _open(os.path.join(audit, f"writes_{_process}.txt"), "a") as f:
                    f.write(path + "\n")
        return _open(file, mode, *args, **kwargs)

    builtins.open = _audited_open

if os.environ.get("RSJAX_TEST_HANG_IN_SAVE"):
    hang_step = os.environ["RSJAX_TEST_HANG_IN_SAVE"]
    from orbax.checkpoint._src.path import atomicity

    _finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def _hanging_finalize(self, *args, **kwargs):
        if self._final_path.name == hang_step:  # the step folder, not one of its items
            with _open(os.path.join(_workdir, ".in_save"), "w") as f:
                f.write(str(self.get()))
            time.sleep(3600)
        return await _finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = _hanging_finalize

if __name__ == "__main__":
    from absl import app

    from rsjax import main

    sys.argv[0] = "rsjax.main"
    app.run(main.main)
