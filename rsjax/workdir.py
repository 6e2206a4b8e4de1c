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
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

# Keys that may change between a run and its continuation without changing its result.
MUTABLE_KEYS = ("stop_after_steps", "log_every", "eval", "data.num_workers", "data.data_dir",
                "data.cache_dir", "transfer", "analysis")


class ConfigMismatchError(ValueError):
    pass


def _flatten(d: Any, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def _mutable(key: str) -> bool:
    return any(key == m or key.startswith(m + ".") for m in MUTABLE_KEYS)


def config_diff(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if _mutable(k):
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            va, vb = list(va), list(vb)
        if va != vb:
            diffs.append(f"{k}: {va!r} -> {vb!r}")
    return diffs


def _numeric_scalars(d: Any, prefix: str = "") -> dict[str, float]:
    """``{"a/b": float}`` of the int / float / bool / 0-d array leaves of nested dicts."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numeric_scalars(v, f"{prefix}{k}/"))
            continue
        if hasattr(v, "shape") and getattr(v, "shape", None) == ():
            v = v.item() if hasattr(v, "item") else v
        if isinstance(v, (bool, int, float)) and not isinstance(v, str):
            out[f"{prefix}{k}"] = float(v)
    return out


class Workdir:
    def __init__(self, path: str, config: ml_collections.ConfigDict, *, is_main: bool = True):
        self.path = os.path.abspath(path)
        self.is_main = is_main
        self.metrics_path = os.path.join(self.path, "metrics.jsonl")
        self.events_path = os.path.join(self.path, "events.jsonl")
        self._tb = None
        self._last_step = 0
        cfg_path = os.path.join(self.path, "config.json")
        new = json.loads(config.to_json_best_effort())
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                try:
                    old = json.load(f)
                except json.JSONDecodeError as e:
                    raise ConfigMismatchError(f"{cfg_path} is not valid JSON ({e}); refusing to overwrite it") from None
            diffs = config_diff(old, new)
            if diffs:
                raise ConfigMismatchError(
                    f"workdir {self.path} holds a run with a different config ({'; '.join(diffs[:5])}"
                    f"{' ...' if len(diffs) > 5 else ''}); use a new --workdir or the same config "
                    f"(only {', '.join(MUTABLE_KEYS)} may change)"
                )
        if is_main:
            os.makedirs(self.path, exist_ok=True)
            tmp = cfg_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(new, f, indent=2, sort_keys=True)
            os.replace(tmp, cfg_path)
            self.log_hparams(new)

    # -- metrics -------------------------------------------------------------------------
    def truncate_metrics(self, step: int) -> None:
        """Drops rows logged after ``step`` (the checkpoint resumed from), so a resumed run's
        metrics equal an uninterrupted run's."""
        if not self.is_main or not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            rows = [line for line in f if line.strip()]
        keep = []
        for line in rows:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError):
                continue  # a torn last line from a killed run
        tmp = self.metrics_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.metrics_path)

    def log_metrics(self, step: int, metrics: dict) -> None:
        if not self.is_main:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.log_scalars(step, metrics, prefix="train")

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
        from tensorboardX.summary import hparams

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
        with open(self.events_path, "a") as f:
            f.write(json.dumps({"step": int(step), "kind": kind, "message": message}) + "\n")

    def read_metrics(self) -> list[dict]:
        if not os.path.exists(self.metrics_path):
            return []
        with open(self.metrics_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def _writer(self):
        if self._tb is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: metrics.jsonl is the record of truth
                self._tb = False
                return None
            self._tb = SummaryWriter(os.path.join(self.path, "tb"))
        return self._tb or None

    def close(self) -> None:
        if self._tb:
            self._tb.close()
            self._tb = None

    # -- reports and pictures --------------------------------------------------------------
    def file(self, name: str) -> str:
        """Absolute path of the output file ``name`` inside the workdir.

        Raises:
          ValueError: ``name`` would write outside the workdir.
        """
        root = os.path.realpath(self.path)
        path = os.path.realpath(os.path.join(root, name))
        if not name or os.path.commonpath([root, path]) != root or path == root:
            raise ValueError(f"output file name {name!r} would write outside the workdir {self.path}; "
                             f"use a plain file name")
        return path

    def write_eval_report(self, task: str, metrics: dict, config, name: str = "eval_report.json",
                          step: int | None = None) -> str:
        """Writes ``name`` (task, metrics, config) and logs the scalar metrics to TensorBoard as
        ``eval/<task>/<metric>`` at ``step`` (default: the last logged training step)."""
        path = self.file(name)
        cfg = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else config
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"task": task, "metrics": metrics, "config": cfg}, f, indent=2)
        os.replace(tmp, path)
        self.log_scalars(self._last_step if step is None else step, metrics, prefix=f"eval/{task}")
        return path

    def plot_loss_curve(self, name: str = "loss_curve.png") -> str | None:
        rows = self.read_metrics()
        if not rows:
            return None
        from rsjax import plots

        return plots.loss_curve(rows, self.file(name))

    def plot_confusion(self, cm, name: str, class_names=None) -> str:
        from rsjax import plots

        return plots.confusion_matrix(cm, self.file(name), class_names=class_names)
