"""What a run writes into its workdir, and the checks that keep earlier work safe.

``config.json`` (the full config; a rerun with a different config is refused, except for
``stop_after_steps`` and the keys in :data:`MUTABLE_KEYS`), ``metrics.jsonl`` (a row per
logged step with ``step`` and ``loss``), ``events.jsonl`` (warnings such as refused
steps), TensorBoard events in ``tb/``, ``loss_curve.png`` and, after evaluation,
``eval_report.json`` and pictures.

TensorBoard (``tb/``, one events file per run invocation, written by process 0): the
flattened config as hparams (``_hparams_/*``, written when the workdir is opened),
``train/<metric>`` per logged step, ``train/img_per_s`` / ``train/steps_per_s`` (throughput
since the previous logged step, compilation excluded), and ``eval/<task>/<metric>`` for every
scalar of an evaluation report (pretraining kNN / linear probe and every evaluation job).
``metrics.jsonl`` keeps only the deterministic training metrics (resume equality).

Every file a job names relative to the workdir goes through :meth:`Workdir.file`, which
refuses names that would land outside it (``..``, absolute paths, symlinks leading out).
The only write locations outside the workdir are chosen explicitly by the user: the
``--workdir`` itself, ``data.data_dir`` (TFDS datasets), ``data.cache_dir`` (decoded-array
cache) and the ``--out`` files of ``rsjax.export`` / ``rsjax.bench``.

Several launches in one workdir (issue 13): process 0 of a run holds an exclusive lock
(``fcntl.flock`` on ``<workdir>/.lock``, which names the holder: pid, host, start time and
command line) for as long as the :class:`Workdir` is open; a second launch is refused with
:class:`WorkdirError` naming the holder. The lock dies with its process (kill -9 included),
so a stale ``.lock`` file never blocks a rerun.

Phases (``wd.sub("transfer")``) are sub-folders with their own ``metrics.jsonl``,
``events.jsonl``, ``checkpoints/`` and ``tb/``; they share the parent's lock and config.

Files a run appends to (``metrics.jsonl``, ``events.jsonl``) are read tolerating a torn last
line (a run killed mid-write); opening the workdir drops such a line, and
:meth:`Workdir.truncate` trims both files to the step a run resumes from. Rows are strict JSON:
a non-finite value is written as ``null``.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import math
import os
import socket
import sys
from typing import Any

import ml_collections

from rsjax import optim, plots
from rsjax.data import ops
from rsjax.data.defaults import RENAMED, default_data_config
from rsjax.errors import ConfigError, WorkdirError

# Keys that may change between a run and its continuation without changing its result.
# model.conv picks how convolutions are computed, not what they compute (rsjax.models.conv).
MUTABLE_KEYS = (
    "stop_after_steps",
    "log_every",
    "eval",
    "data.num_workers",
    "data.data_dir",
    "data.cache_dir",
    "model.conv",
)

LOCK_FILE = ".lock"
# Files that exist before anything ran: a workdir holding only these may take another config.
_NOT_RUN_OUTPUT = ("config.json", LOCK_FILE, "tb")


class ConfigMismatchError(WorkdirError, ConfigError):
    """The workdir holds a run with another config (the differing keys are named)."""


def _flatten(d: Any, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def _mutable(key: str, mutable=MUTABLE_KEYS) -> bool:
    return any(key == m or key.startswith(m + ".") for m in mutable)


# SwiMDiff keys added in issue 24, at the values that reproduce what a config without them did
# (not today's defaults: a workdir of the first conditioning resumes only with it).
_SWIMDIFF_BEFORE = {"conditioning": "maps", "log_grad_share": False}
# A change-detection config's loss keys added later, at the values in effect before they existed.
_CHANGE_LOSS_BEFORE = {"pos_weight_power": 0.0}


def complete_config(d: dict) -> dict:
    """A config as plain dicts with the keys added in later rsjax versions at their defaults:
    every block named ``data`` gets the missing keys of
    :func:`rsjax.data.defaults.default_data_config` (its former augmentation keys folded into
    ``data.augment`` by :func:`rsjax.data.ops.augment_spec`), every block named ``optimizer``
    (and its ``plateau``) those of :func:`rsjax.optim.default_block`, every block named
    ``swimdiff`` the values its newer keys had in effect before they existed (``conditioning``
    ``maps``, ``log_grad_share`` False), the ``loss`` block of a ``change_detection`` config
    ``pos_weight_power`` 0 (unweighted BCE), at any depth (``transfer.optimizer``, a study's
    ``arms.<arm>.data``, ``cd.loss``). Keys present are kept as they are; renamed data keys
    (:data:`rsjax.data.defaults.RENAMED`: ``test_tiles`` -> ``test_scenes``) take their new
    name. The retired ``data.eval_split`` moves to the one name of its role: ``analysis.split`` where the config has an ``analysis``
    block (noisy labels), else ``eval.test_split`` (with ``eval.train_split`` from
    ``data.train_split`` where the block lacks it: the EuroSAT study before it had both).

    Old workdirs' configs are completed once, when read (:func:`config_diff`,
    :func:`rsjax.checkpoint.read_config`), so that adding a key with a default in a new rsjax
    version does not lock a workdir written before it existed."""
    data_defaults = default_data_config().to_dict()
    opt_defaults = optim.default_block().to_dict()

    def fill(block: dict, defaults: dict) -> dict:
        out = dict(block)
        for k, v in defaults.items():
            if k not in out:
                out[k] = v
            elif isinstance(v, dict) and isinstance(out[k], dict):
                out[k] = fill(out[k], v)
        return out

    def retire_eval_split(node: dict) -> dict:
        data = node.get("data")
        if not isinstance(data, dict) or "eval_split" not in data:
            return node
        node = {**node, "data": {k: v for k, v in data.items() if k != "eval_split"}}
        if isinstance(node.get("analysis"), dict):
            node["analysis"] = {"split": data["eval_split"], **node["analysis"]}
        elif isinstance(node.get("eval"), dict):
            node["eval"] = {
                "train_split": data.get("train_split", "train"),
                "test_split": data["eval_split"],
                **node["eval"],
            }
        return node

    def walk(node):
        if not isinstance(node, dict):
            return node
        out = {}
        change_detection = node.get("job") == "change_detection"
        for k, v in retire_eval_split(node).items():
            v = walk(v)
            if isinstance(v, dict) and k == "loss" and change_detection:
                v = fill(v, _CHANGE_LOSS_BEFORE)
            if isinstance(v, dict) and k == "data":
                legacy = [key for key in ops.LEGACY_KEYS if key in v]
                if legacy:
                    spec = ops.augment_spec(v)
                    v = {key: val for key, val in v.items() if key not in legacy}
                    v["augment"] = spec
                v = {RENAMED.get(key, key): val for key, val in v.items()}
                v = fill(v, data_defaults)
            elif isinstance(v, dict) and k == "optimizer":
                v = fill(v, opt_defaults)
            elif isinstance(v, dict) and k == "swimdiff":
                v = fill(v, _SWIMDIFF_BEFORE)
            out[k] = v
        return out

    return walk(d)


def config_diff(old: dict, new: dict, mutable=MUTABLE_KEYS) -> list[str]:
    """``["key: old -> new", ...]`` of the flattened configs, keys in ``mutable`` ignored. Both
    sides are completed first (:func:`complete_config`): a key one side lacks counts at its
    default."""
    a, b = _flatten(complete_config(old)), _flatten(complete_config(new))
    diffs = []
    for k in sorted(set(a) | set(b)):
        if _mutable(k, mutable):
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            va, vb = list(va), list(vb)
        if va != vb:
            diffs.append(f"{k}: {va!r} -> {vb!r}")
    return diffs


def strict_json(x: Any) -> Any:
    """``x`` with non-finite floats as None and numpy / jax scalars and arrays as plain Python
    (JSON has no NaN; Python would write a bare ``NaN`` that strict readers reject)."""
    if isinstance(x, dict):
        return {str(k): strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    if x is None or isinstance(x, (bool, str)):
        return x
    if hasattr(x, "tolist") and not isinstance(x, (int, float)):
        return strict_json(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def dumps(x: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`strict_json` (``allow_nan=False``: a NaN can never slip through)."""
    return json.dumps(strict_json(x), allow_nan=False, **kwargs)


def _tensorboardx():
    """The tensorboardX module, imported when the first writer opens (a heavy import).

    tensorboardX imports torch at its top, where torch is installed, only so that it can take
    torch tensors as values: a heavy import in every training process, which writes numpy
    scalars. Unless this process already holds torch, that import is made to fail for the
    moment tensorboardX loads (torch stays importable afterwards)."""
    hide_torch = "tensorboardX" not in sys.modules and "torch" not in sys.modules
    if hide_torch:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
        # heavy, optional (metrics.jsonl is the record): only when a writer opens
        import tensorboardX
        import tensorboardX.summary  # noqa: F401 - loads the hparams helpers
    finally:
        if hide_torch:
            del sys.modules["torch"]
    return tensorboardX


def read_jsonl(path: str) -> list[dict]:
    """The rows of a ``.jsonl`` file; a torn (unparseable) LAST line is ignored (a run killed
    mid-write), a bad line elsewhere raises :class:`WorkdirError` naming file and line."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if all(not rest.strip() for rest in lines[i + 1 :]):
                break  # torn last line
            raise WorkdirError(f"{path} line {i + 1} is not JSON ({e}); fix or remove that line") from None
    return rows


def _write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through ``<path>.tmp`` + rename; the temporary file is removed
    on any failure, and an OSError (disk full, read-only) becomes a WorkdirError naming the file."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise WorkdirError(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _numeric_scalars(d: Any, prefix: str = "") -> dict[str, float]:
    """``{"a/b": float}`` of the int / float / bool / 0-d array leaves of nested dicts; NaN left
    out (a value not computed at this step: the logged-steps-only diagnostics of a row forced by
    a stop; a refused step's NaN loss stays in ``metrics.jsonl`` and ``events.jsonl``)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numeric_scalars(v, f"{prefix}{k}/"))
            continue
        if hasattr(v, "shape") and getattr(v, "shape", None) == ():
            v = v.item() if hasattr(v, "item") else v
        if isinstance(v, (bool, int, float)) and not isinstance(v, str) and not math.isnan(v):
            out[f"{prefix}{k}"] = float(v)
    return out


def _has_run_output(path: str) -> bool:
    """Whether anything besides config.json, the lock, TensorBoard hparams and empty folders
    (an empty ``checkpoints/``) is in ``path``: i.e. whether something ran there."""
    for root, dirs, files in os.walk(path):
        if root == path:
            dirs[:] = [d for d in dirs if d not in _NOT_RUN_OUTPUT]
            files = [f for f in files if f not in _NOT_RUN_OUTPUT and not f.endswith(".tmp")]
        if files:
            return True
    return False


class _Lock:
    """An exclusive, non-blocking ``flock`` on ``<path>/.lock`` held by this process.

    The holder (pid, host, start time, command line) is written into the file for the message
    a second launch gets. On a read-only filesystem (a finished run being rerun for its
    report) the lock is taken on the existing file or the folder itself, without a holder line.
    """

    def __init__(self, path: str):
        self.file = os.path.join(path, LOCK_FILE)
        try:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            writable = True
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise WorkdirError(f"cannot create the lock file {self.file}: {e.strerror or e}") from e
            fd = os.open(self.file if os.path.exists(self.file) else path, os.O_RDONLY)
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirError(f"cannot lock {self.file}: {e.strerror or e}") from e
            holder = ""
            try:
                with open(self.file) as f:
                    holder = f.read().strip()
            except OSError:
                pass
            raise WorkdirError(
                f"workdir {path} is in use by another run ({holder or 'holder unknown'}); wait for it to "
                f"finish or stop it, or use another --workdir"
            ) from None
        self.fd = fd
        if writable:
            started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            holder = f"pid {os.getpid()} on {socket.gethostname()} since {started}: {' '.join(sys.argv)}"
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (holder + "\n").encode(), 0)
            except OSError:  # disk full: the lock holds all the same
                pass

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


class Workdir:
    """A run's output folder: lock, config.json, metrics / events / TensorBoard, reports.

    Raises :class:`WorkdirError` when ``path`` is a file or not writable, is locked by another
    launch, or holds a run with another config (:class:`ConfigMismatchError`, keys named; a
    workdir where nothing ran yet takes the new config). ``config.json`` is written only when
    its content changes. Use as a context manager or call :meth:`close` (releases the lock).
    """

    def __init__(self, path: str, config: ml_collections.ConfigDict, *, is_main: bool = True):
        self.path = os.path.abspath(path)
        self.is_main = is_main
        self._lock = None
        self._parent = None
        self._subs: dict[str, Workdir] = {}
        self._init_files()
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise WorkdirError(f"--workdir {self.path} is a file, not a folder; choose a folder path")
        new = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)
        self.config_dict = new
        if not is_main:
            self._check_config(new)  # other processes read; process 0 writes
            return
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise WorkdirError(f"cannot create --workdir {self.path}: {e.strerror or e}") from e
        self._lock = _Lock(self.path)
        try:
            self._check_config(new, write=True)
            self._drop_torn_lines()
            self.log_hparams(new)
        except BaseException:
            self.close()
            raise

    def _init_files(self) -> None:
        self.metrics_path = os.path.join(self.path, "metrics.jsonl")
        self.events_path = os.path.join(self.path, "events.jsonl")
        self._tb = None
        self._last_step = 0

    def _check_config(self, new: dict, write: bool = False) -> None:
        cfg_path = os.path.join(self.path, "config.json")
        text = json.dumps(strict_json(new), indent=2, sort_keys=True)
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                old_text = f.read()
            if old_text.strip() == text.strip():
                return  # unchanged: not rewritten (a finished run on a read-only disk can be rerun)
            try:
                old = json.loads(old_text)
            except json.JSONDecodeError as e:
                raise ConfigMismatchError(f"{cfg_path} is not valid JSON ({e}); refusing to overwrite it") from None
            diffs = config_diff(old, new)
            if diffs and _has_run_output(self.path):
                raise ConfigMismatchError(
                    f"workdir {self.path} holds a run with a different config ({'; '.join(diffs[:5])}"
                    f"{' ...' if len(diffs) > 5 else ''}); use a new --workdir or the same config "
                    f"(only {', '.join(MUTABLE_KEYS)} may change)"
                )
            if diffs and write:
                print(
                    f"Note: {cfg_path} named another config but nothing ran in {self.path}; "
                    f"replacing it ({'; '.join(diffs[:3])}{' ...' if len(diffs) > 3 else ''})",
                    flush=True,
                )
        if write:
            _write_atomic(cfg_path, text)

    def _drop_torn_lines(self) -> None:
        """Removes a torn last line (a run killed mid-write) so new rows start on a line of their own."""
        for path in (self.metrics_path, self.events_path):
            if not os.path.exists(path):
                continue
            with open(path) as f:
                text = f.read()
            lines = text.splitlines(keepends=True)
            if not lines:
                continue
            try:
                json.loads(lines[-1])
                if text.endswith("\n"):
                    continue
                keep = text + "\n"  # complete row missing only its newline
            except json.JSONDecodeError:
                keep = "".join(lines[:-1])
            _write_atomic(path, keep)

    def __enter__(self) -> "Workdir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sub(self, name: str) -> "Workdir":
        """The phase folder ``<path>/<name>/`` (own metrics, events, checkpoints and tb/; the
        parent's lock and config; no config.json). ``sub("")`` is ``self``."""
        if not name:
            return self
        if name in self._subs:
            return self._subs[name]
        if name != os.path.basename(os.path.normpath(name)) or name in (".", "..") or name in _NOT_RUN_OUTPUT:
            raise ConfigError(f"phase name {name!r}: expected a plain folder name")
        w = object.__new__(Workdir)
        w.path = os.path.join(self.path, name)
        w.is_main, w._lock, w._parent, w._subs = self.is_main, None, self, {}
        w.config_dict = self.config_dict
        w._init_files()
        if self.is_main:
            if os.path.exists(w.path) and not os.path.isdir(w.path):
                raise WorkdirError(f"{w.path} is a file, not a folder; remove it")
            try:
                os.makedirs(w.path, exist_ok=True)
            except OSError as e:
                raise WorkdirError(f"cannot create {w.path}: {e.strerror or e}") from e
            w._drop_torn_lines()
        self._subs[name] = w
        return w

    # -- metrics -------------------------------------------------------------------------
    def truncate(self, step: int) -> None:
        """Drops the rows of ``metrics.jsonl`` and ``events.jsonl`` logged after ``step`` (the
        checkpoint resumed from) and a torn last line, so a resumed run's files equal an
        uninterrupted run's. A file with nothing to drop is not rewritten."""
        if not self.is_main:
            return
        for path in (self.metrics_path, self.events_path):
            if not os.path.exists(path):
                continue
            with open(path) as f:
                text = f.read()
            keep = []
            for line in text.splitlines(keepends=True):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line of a killed run
                if not isinstance(row, dict) or int(row.get("step", 0)) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            new = "".join(keep)
            if new != text:
                _write_atomic(path, new)

    def log_metrics(self, step: int, metrics: dict) -> None:
        """Appends ``{"step": step, **metrics}`` (floats; non-finite as null) to metrics.jsonl
        and the same scalars to TensorBoard as ``train/<key>``."""
        if not self.is_main:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._append(self.metrics_path, row)
        self.log_scalars(step, metrics, prefix="train")

    def _append(self, path: str, row: dict) -> None:
        try:
            with open(path, "a") as f:
                f.write(dumps(row) + "\n")
        except OSError as e:
            raise WorkdirError(f"cannot write {path}: {e.strerror or e}") from e

    def log_scalars(self, step: int, scalars: dict, prefix: str) -> None:
        """Writes the numeric entries of ``scalars`` (nested dicts flattened with ``/``;
        strings, lists and None skipped) to TensorBoard as ``<prefix>/<key>`` at ``step``.
        TensorBoard only: ``metrics.jsonl`` is unchanged."""
        if not self.is_main:
            return
        self._last_step = max(self._last_step, int(step))
        tb = self._writer()
        if tb is None:
            return
        for k, v in _numeric_scalars(scalars).items():
            tb.add_scalar(f"{prefix}/{k}", v, int(step))
        tb.flush()

    def log_hparams(self, config_dict: dict) -> None:
        """The flattened config as TensorBoard hparams (HParams tab), in this run's own events
        file: lists and other non-scalars as JSON strings, None left out."""
        if not self.is_main:
            return
        tb = self._writer()
        if tb is None:
            return
        hparams = _tensorboardx().summary.hparams

        hp = {}
        for k, v in _flatten(config_dict).items():
            if v is None:
                continue
            hp[k] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
        exp, ssi, sei = hparams(hp, {"train/loss": 0.0})
        for summary in (exp, ssi, sei):
            tb.file_writer.add_summary(summary)
        tb.flush()

    def log_event(self, step: int, kind: str, message: str) -> None:
        if not self.is_main:
            return
        self._append(self.events_path, {"step": int(step), "kind": kind, "message": message})

    def read_metrics(self) -> list[dict]:
        """The rows of metrics.jsonl (a torn last line ignored; non-finite values are None)."""
        return read_jsonl(self.metrics_path)

    def read_events(self) -> list[dict]:
        return read_jsonl(self.events_path)

    def _writer(self):
        if self._tb is None:
            try:
                tbx = _tensorboardx()
            except ImportError:  # optional: metrics.jsonl is the record of truth
                self._tb = False
                return None
            try:
                self._tb = tbx.SummaryWriter(os.path.join(self.path, "tb"))
            except OSError as e:  # read-only disk: metrics.jsonl stays the record
                print(f"WARNING: no TensorBoard events in {self.path}/tb ({e.strerror or e})", flush=True)
                self._tb = False
        return self._tb or None

    def close(self) -> None:
        """Closes the TensorBoard writers (this one's and its phases') and releases the lock."""
        for w in self._subs.values():
            w.close()
        if self._tb:
            try:
                self._tb.close()
            except OSError:
                pass
            self._tb = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __del__(self):  # a Workdir dropped without close() still releases its lock
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    # -- reports and pictures --------------------------------------------------------------
    def finished_report(self, result) -> dict | None:
        """The metrics of ``eval_report.json`` when ``result`` (a ``train.FitResult``) says the run
        had already finished before this call and the report exists: a rerun of a finished job
        then writes nothing (also on a read-only filesystem). None otherwise."""
        path = os.path.join(self.path, "eval_report.json")
        if not (result.finished and result.summary.get("start_step") == result.step and os.path.exists(path)):
            return None
        with open(path) as f:
            report = json.load(f)
        if self.is_main:
            print(f"{self.path} already finished at step {result.step}; its report: {path}", flush=True)
        return report["metrics"]

    def file(self, name: str) -> str:
        """Absolute path of the output file ``name`` inside the workdir.

        Raises:
          ConfigError: ``name`` would write outside the workdir.
        """
        root = os.path.realpath(self.path)
        path = os.path.realpath(os.path.join(root, name))
        if not name or os.path.commonpath([root, path]) != root or path == root:
            raise ConfigError(
                f"output file name {name!r} would write outside the workdir {self.path}; use a plain file name"
            )
        return path

    def write_eval_report(
        self, task: str, metrics: dict, config, name: str = "eval_report.json", step: int | None = None
    ) -> str:
        """Writes ``name`` (task, metrics, config) and logs the scalar metrics to TensorBoard as
        ``eval/<task>/<metric>`` at ``step`` (default: the last logged training step)."""
        path = self.file(name)
        cfg = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else config
        _write_atomic(path, dumps({"task": task, "metrics": metrics, "config": cfg}, indent=2))
        self.log_scalars(self._last_step if step is None else step, metrics, prefix=f"eval/{task}")
        return path

    def plot_loss_curve(self, name: str = "loss_curve.png") -> str | None:
        rows = self.read_metrics()
        if not rows:
            return None

        return plots.loss_curve(rows, self.file(name))

    def plot_confusion(self, cm, name: str, class_names=None) -> str:
        return plots.confusion_matrix(cm, self.file(name), class_names=class_names)
