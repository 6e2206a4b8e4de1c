"""Measured results as data: JSON files under ``results/``, tables in README.md generated from them.

Every measurement rsjax reports (the EuroSAT study, the throughput bench, ...) is written as a
JSON file with :func:`save`, carrying its :func:`provenance` (command, git commit, date, machine).
README.md never holds a hand-typed number for these: it holds markers

    <!-- results:NAME -->
    ...generated table...
    <!-- /results:NAME -->

and ``python -m rsjax.results`` replaces the text between each pair with ``RENDERERS[NAME]``
applied to the JSON files matched by ``SOURCES[NAME]`` (a glob under the results folder).
``python -m rsjax.results --check`` exits 1 when README.md differs from what the JSON gives,
so a test proves the tables are generated from the data.

Adding a table: write ``render_x(payloads: list[dict]) -> str`` (markdown), then add
``"x": render_x`` to ``RENDERERS`` and ``"x": "x_*.json"`` to ``SOURCES``.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import platform
import subprocess
import sys
import tempfile

from scipy import special  # stdtrit: Student's t quantile, without importing all of scipy.stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- provenance


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> dict | None:
    """``{"commit": short hash, "dirty": bool}`` of the checkout rsjax runs from, or None.

    A copy of the tree without ``.git`` (e.g. the working tree sent to a device machine) has no
    commit; the environment variable ``RSJAX_GIT_COMMIT`` (``<hash>`` or ``<hash>-dirty``),
    set by whoever launched the run from the checkout, then stands in for it.
    """
    commit = _git("rev-parse", "--short", "HEAD")
    if commit:
        # Tracked files only: untracked scratch files do not change what ran.
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
        return {"commit": commit, "dirty": dirty}
    env = os.environ.get("RSJAX_GIT_COMMIT", "").strip()
    if env:
        return {"commit": env.removesuffix("-dirty"), "dirty": env.endswith("-dirty"), "from_env": True}
    return None


def _cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``; what the CPU bench's figures depend on)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict:
    """A description of the machine without its host name: OS, CPUs, accelerator, versions."""
    desc = {
        "platform": platform.platform(),  # OS/kernel/arch; platform.node() (host name) is left out
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
    }
    try:
        import jax  # provenance only: rendering the tables never starts a backend

        devices = jax.devices()
        desc.update(
            jax=jax.__version__,
            backend=jax.default_backend(),
            device_count=len(devices),
            device_kinds=sorted({d.device_kind for d in devices}),
        )
    except Exception as e:  # noqa: BLE001 - provenance must never stop a run that already finished
        desc["jax_error"] = repr(e)
    try:
        import flax  # provenance only, as jax above

        desc["flax"] = flax.__version__
    except Exception:  # noqa: BLE001
        pass
    return desc


def _argv_command(argv: list[str]) -> str:
    """``argv`` as a command to retype: ``python -m rsjax.x ...`` for a module of this repo
    (``python -m`` puts the module's file path in argv[0]), else the argv joined."""
    if not argv or not argv[0]:
        return "python"
    head = os.path.abspath(argv[0])
    if head.startswith(os.path.join(REPO, "rsjax") + os.sep) and head.endswith(".py"):
        mod = os.path.relpath(head, REPO)[:-3].replace(os.sep, ".")
        return " ".join(["python -m " + mod.removesuffix(".__main__"), *argv[1:]])
    return " ".join(argv)


def provenance(command: str | None = None) -> dict:
    """Where a result came from: command, git commit, date (ISO 8601 UTC) and machine.

    ``command`` defaults to the current process's argv joined by spaces. ``git`` is None when
    rsjax does not run from a git checkout (and ``RSJAX_GIT_COMMIT`` is unset).
    """
    if command is None:
        command = _argv_command(sys.argv)
    return {
        "command": command,
        "git": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }


# ----------------------------------------------------------------------------- strict JSON


def to_strict_json(x):
    """``x`` with NaN/inf floats replaced by None and numpy scalars/arrays made plain Python.

    JSON has no NaN: Python's ``json`` writes ``NaN`` (not JSON) by default, which strict
    parsers (browsers, jq) reject. A non-finite measurement is recorded as ``null``.
    """
    if isinstance(x, dict):
        return {str(k): to_strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_strict_json(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if hasattr(x, "tolist") and not isinstance(x, (int, float)):  # numpy scalar or array, jax array
        return to_strict_json(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, int):
        return int(x)
    raise TypeError(f"results.save: cannot write {type(x).__name__} {x!r} as JSON")


def save(payload: dict, path) -> str:
    """Writes ``payload`` as strict JSON to ``path`` atomically (temporary file + rename).

    A reader (or a run cut off mid-write) never sees a half-written file: the rename is atomic
    on POSIX. Non-finite floats become ``null`` (:func:`to_strict_json`). Returns ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    text = json.dumps(to_strict_json(payload), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by anyone
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_all(pattern: str, results_dir: str = "results") -> list[dict]:
    """The JSON files matching ``pattern`` under ``results_dir``, sorted by file name.

    Each payload gets ``_file`` (its name) so renderers can sort or cite it.
    """
    out = []
    for p in sorted(glob.glob(os.path.join(results_dir, pattern))):
        with open(p) as f:
            d = json.load(f)
        d["_file"] = os.path.basename(p)
        out.append(d)
    return out


# ----------------------------------------------------------------------------- renderers


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _mean_sd(vals) -> str:
    """``mean ± sd`` in percent, sd the SAMPLE standard deviation (ddof = 1); the mean alone
    for one value."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{100 * m:.1f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return f"{100 * m:.1f} ± {100 * sd:.1f}"


def paired_interval(a: dict, b: dict, level: float = 0.95) -> dict | None:
    """Paired difference ``a - b`` over the seeds both have (``{seed: value}``): mean, sample sd,
    n and the two-sided ``level`` t-interval ``mean ± t_{(1+level)/2, n-1} sd / sqrt(n)``;
    None with fewer than 2 common seeds."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [a[s] - b[s] for s in seeds]
    n = len(d)
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    half = float(special.stdtrit(n - 1, 0.5 + level / 2)) * sd / math.sqrt(n)
    return {"mean": m, "sd": sd, "n": n, "lo": m - half, "hi": m + half}


def _by_setting(payloads: list[dict]) -> list[tuple[str, list[dict]]]:
    """``[(setting, arm payloads in arm order)]`` of a study's arm files, settings sorted."""
    groups: dict[str, list[dict]] = {}
    for p in payloads:
        groups.setdefault(p.get("setting", "?"), []).append(p)
    return [
        (setting, sorted(groups[setting], key=lambda p: (p.get("arm_index", 1 << 30), p.get("arm", ""))))
        for setting in sorted(groups)
    ]


def _by_seed(payload: dict, metric: str) -> dict:
    return {r["seed"]: r[metric] for r in payload.get("runs", []) if r.get(metric) is not None and "error" not in r}


def _mechanism(p: dict) -> str:
    """L_D, conditioning gain (zeroed / shuffled conditioning), L_D's gradient share, same-scene
    candidates per query and refused steps: last-window means over the arm's seeds."""
    w = p.get("last_window_mean") or {}
    if not w:
        return "| | | | | |"
    ld, sh = w.get("loss_diffusion"), w.get("loss_diffusion_shuffled")
    gain = "" if w.get("conditioning_gain") is None else f"{100 * w['conditioning_gain']:.1f}"
    if ld is not None and sh:
        gain += f" / {100 * (sh - ld) / sh:.1f}"
    share = "" if w.get("grad_share_diffusion") is None else f"{100 * w['grad_share_diffusion']:.0f}"
    fn = "" if w.get("scene_false_negatives") is None else f"{w['scene_false_negatives']:.1f}"
    return f"| {'' if ld is None else f'{ld:.4f}'} | {gain} | {share} | {fn} | {p.get('refused_steps', 0)} |"


def _comparisons(rows: list[dict]) -> list[str]:
    by_arm = {p.get("arm"): p for p in rows}
    pairs = next((p["comparisons"] for p in rows if p.get("comparisons")), [])
    out = []
    for a, b in pairs:
        if a not in by_arm or b not in by_arm:
            continue
        cells = []
        for metric in ("linear", "knn"):
            ci = paired_interval(_by_seed(by_arm[a], metric), _by_seed(by_arm[b], metric))
            cells.append(
                "n/a"
                if ci is None
                else f"{100 * ci['mean']:+.1f} [{100 * ci['lo']:+.1f}, {100 * ci['hi']:+.1f}] (n = {ci['n']})"
            )
        out.append(f"| {a} − {b} | {cells[0]} | {cells[1]} |")
    if not out:
        return []
    return [
        "",
        "Paired differences (same seeds, first arm minus second, points of top-1 %; mean [95 % t-interval]):",
        "",
        "| comparison | linear | kNN |",
        "|---|---|---|",
        *out,
    ]


def _secs(x) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _device(prov: dict) -> str:
    m = (prov or {}).get("machine") or {}
    kinds = m.get("device_kinds") or ["?"]
    return f"{m.get('device_count', '?')}x {'/'.join(kinds)}"


def _length(settings: dict) -> str:
    cap = settings.get("max_steps_per_arm") or 0
    return f"{cap} steps per arm (capped)" if cap else f"{settings.get('epochs', '?')} epochs"


def render_study_table(payloads: list[dict]) -> str:
    """Markdown tables of study arm results (files ``study_<setting>_<arm>.json``).

    One table per study setting (``payload["setting"]``, e.g. ``gpu`` or ``cpu``), rows in the
    order of ``payload["arm_index"]``: linear-probe and kNN top-1 on the test split (mean ± std
    over seeds, then the per-seed values), pretraining seconds (without compile), the arm's
    wall seconds (compile, pretraining, feature extraction and probes), device and date.
    """
    if not payloads:
        return "_No study results yet (`results/study_*.json`)._\n"
    blocks = []
    for setting, rows in _by_setting(payloads):
        s = rows[0].get("settings", {})
        head = (
            f"**`{setting}`**: {s.get('dataset', '?')}, {s.get('model', '?')}, {s.get('image_size', '?')} px, "
            f"{_length(s)}, batch {s.get('batch_size', '?')}, {s.get('dtype', '?')}, "
            f"{s.get('num_train', '?')} train / {s.get('num_test', '?')} test images "
            f"(linear probe and kNN k = {s.get('knn_k', '?')} on frozen features, test split, top-1 %)"
        )
        lines = [
            head,
            "",
            "| arm | linear | kNN | per seed (linear / kNN) | steps | pretrain s | arm wall s | device | date "
            "| commit | L_D | cond. gain % (zeroed / shuffled) | L_D grad share % | same-scene cand. | refused |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in rows:
            runs = p.get("runs", [])
            per_seed = ", ".join(f"s{r.get('seed', '?')}: {_pct(r.get('linear'))} / {_pct(r.get('knn'))}" for r in runs)
            steps = sorted({r.get("steps") for r in runs if r.get("steps") is not None})
            prov = p.get("provenance", {})
            git = prov.get("git") or {}
            commit = (git.get("commit", "?") + ("-dirty" if git.get("dirty") else "")) if git else "n/a"
            lines.append(
                f"| {p.get('arm', '?')} | {_mean_sd([r.get('linear') for r in runs])} "
                f"| {_mean_sd([r.get('knn') for r in runs])} | {per_seed} "
                f"| {'/'.join(str(x) for x in steps) or '0'} | {_secs(p.get('pretrain_s'))} "
                f"| {_secs(p.get('wall_s'))} | {_device(prov)} | {str(prov.get('date', '?'))[:10]} | {commit} "
                + _mechanism(p)
            )
        total = sum(p.get("wall_s") or 0.0 for p in rows)
        lines += [
            "",
            f"Mean ± sample sd (ddof = 1) over seeds. Study wall time (every arm and seed, all calls): "
            f"{total / 60:,.0f} min.",
        ]
        lines += _comparisons(rows)
        cmds = sorted({p.get("provenance", {}).get("command", "?") for p in rows})
        lines += ["", "Command" + ("s" if len(cmds) > 1 else "") + ": " + "; ".join(f"`{c}`" for c in cmds)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


_OSCD_MODES = (("frozen", "frozen"), ("finetuned", "fine-tuned"))


def _oscd_scores(p: dict, mode: str, metric: str = "f1") -> dict:
    """``{(fold, seed): value}`` of the arm's runs scored in ``mode``."""
    return {
        (r["fold"], r["seed"]): r[mode][metric]
        for r in p.get("runs", [])
        if "error" not in r and (r.get(mode) or {}).get(metric) is not None
    }


def _oscd_pooled(p: dict, mode: str, metric: str = "f1") -> dict:
    """``{seed: value}`` of the arm's scores pooled over the folds (every test pixel once)."""
    return {row["seed"]: row[mode][metric] for row in p.get("pooled", [])}


def _interval(ci) -> str:
    return (
        "n/a"
        if ci is None
        else f"{100 * ci['mean']:+.1f} [{100 * ci['lo']:+.1f}, {100 * ci['hi']:+.1f}] (n = {ci['n']})"
    )


def render_oscd_table(payloads: list[dict]) -> str:
    """Markdown tables of the OSCD study (files ``oscd_<setting>_<arm>.json``, rsjax.jobs.study_oscd).

    Per setting: the scores of the change class per arm and mode (encoder frozen / fine-tuned):
    F1, IoU, precision and recall pooled over the folds (the confusion counts of every test city
    summed, per seed; mean ± sample sd over seeds), F1 per fold (mean over seeds), and F1 over the
    fold x seed runs (mean ± sample sd); then the pretraining record (steps, seconds, same-scene
    candidates per query, L_D, L_D with the conditioning zeroed / shuffled, refused steps) and
    the paired differences of ``payload["comparisons"]`` (first arm minus second) with 95 %
    t-intervals: over the fold x seed pairs both arms have, and over the seeds of the pooled F1.
    """
    if not payloads:
        return "_No OSCD study results yet (`results/oscd_*.json`)._\n"
    groups: dict[str, list[dict]] = {}
    for p in payloads:
        groups.setdefault(p.get("setting", "?"), []).append(p)
    blocks = []
    for setting in sorted(groups):
        rows = sorted(groups[setting], key=lambda p: (p.get("arm_index", 1 << 30), p.get("arm", "")))
        s = rows[0].get("settings", {})
        cd = s.get("cd", {})
        folds = s.get("folds", [])
        length = f"{s['max_steps_per_arm']} steps" if s.get("max_steps_per_arm") else f"{s.get('epochs', '?')} epochs"
        head = (
            f"**`{setting}`**: {s.get('dataset', '?')}, {s.get('model', '?')}; pretraining on both dates of the "
            f"training cities' crops, {s.get('image_size', '?')} px patches, {length}, batch {s.get('batch_size', '?')}; "
            f"change detection on {cd.get('crop_size', '?')} px crops, "
            + ", ".join(f"{v} {k} steps" for k, v in (cd.get("steps") or {}).items())
            + f", batch {cd.get('batch_size', '?')}. Folds (test cities): "
            + ", ".join(f"F{f['fold']} {' + '.join(f['test'])}" for f in folds)
            + ". Scores of the change class, %."
        )
        fold_ids = [f["fold"] for f in folds]
        lines = [
            head,
            "",
            "| arm | encoder | F1 pooled | IoU pooled | precision pooled | recall pooled | F1 per fold ("
            + " / ".join(f"F{k}" for k in fold_ids)
            + ") | F1 over fold x seed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in rows:
            for mode, label in _OSCD_MODES:
                runs = _oscd_scores(p, mode)
                per_fold = " / ".join(
                    _pct(sum(v) / len(v)) if (v := [x for (f, _), x in runs.items() if f == k]) else "n/a"
                    for k in fold_ids
                )
                pooled = [
                    _mean_sd(list(_oscd_pooled(p, mode, m).values())) for m in ("f1", "iou", "precision", "recall")
                ]
                lines.append(
                    f"| {p.get('arm', '?')} | {label} | {' | '.join(pooled)} | {per_fold} "
                    f"| {_mean_sd(list(runs.values()))} |"
                )
        lines += [
            "",
            "| arm | runs (fold x seed) | pretraining steps | pretraining s | same-scene cand. | L_D "
            "| L_D zeroed / shuffled cond. | refused | arm wall min | device | date | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in rows:
            runs = p.get("runs", [])
            w = p.get("last_window_mean") or {}
            steps = sorted({r.get("steps") for r in runs if r.get("steps") is not None})
            prov = p.get("provenance", {})
            git = prov.get("git") or {}
            commit = (git.get("commit", "?") + ("-dirty" if git.get("dirty") else "")) if git else "n/a"
            fn = "" if w.get("scene_false_negatives") is None else f"{w['scene_false_negatives']:.1f}"
            ld = "" if w.get("loss_diffusion") is None else f"{w['loss_diffusion']:.4f}"
            nocond = (
                ""
                if w.get("loss_diffusion_nocond") is None
                else f"{w['loss_diffusion_nocond']:.4f} / {w.get('loss_diffusion_shuffled', float('nan')):.4f}"
            )
            failed = f" ({len(p['errors'])} failed)" if p.get("errors") else ""
            lines.append(
                f"| {p.get('arm', '?')} | {len(runs)}{failed} | {'/'.join(str(x) for x in steps) or '0'} "
                f"| {_secs(p.get('pretrain_s'))} | {fn} | {ld} | {nocond} | {p.get('refused_steps', 0)} "
                f"| {(p.get('wall_s') or 0) / 60:,.0f} | {_device(prov)} | {str(prov.get('date', '?'))[:10]} "
                f"| {commit} |"
            )
        by_arm = {p.get("arm"): p for p in rows}
        pairs = next((p["comparisons"] for p in rows if p.get("comparisons")), [])
        diffs = []
        for a, b in pairs:
            if a in by_arm and b in by_arm:
                cells = [
                    _interval(paired_interval(_oscd_scores(by_arm[a], m), _oscd_scores(by_arm[b], m)))
                    for m, _ in _OSCD_MODES
                ]
                cells += [
                    _interval(paired_interval(_oscd_pooled(by_arm[a], m), _oscd_pooled(by_arm[b], m)))
                    for m, _ in _OSCD_MODES
                ]
                diffs.append(f"| {a} − {b} | {' | '.join(cells)} |")
        if diffs:
            lines += [
                "",
                "Paired differences of F1 (first arm minus second, points; mean [95 % t-interval]): over the "
                "fold x seed runs both arms have, and over the seeds of the pooled F1:",
                "",
                "| comparison | frozen, fold x seed | fine-tuned, fold x seed | frozen, pooled | fine-tuned, pooled |",
                "|---|---|---|---|---|",
                *diffs,
            ]
        cmds = sorted({p.get("provenance", {}).get("command", "?") for p in rows})
        lines += [
            "",
            "Mean ± sample sd (ddof = 1). Command"
            + ("s" if len(cmds) > 1 else "")
            + ": "
            + "; ".join(f"`{c}`" for c in cmds),
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def render_bench_table(payloads: list[dict]) -> str:
    """Markdown throughput tables of ``python -m rsjax.bench`` results (files ``bench_*.json``,
    ``{"kind": "rsjax.bench/v1", "rows": [...]}``; see :mod:`rsjax.bench`).

    One table per (device, date) of the rows' provenance, rows in file order. MFU is computed
    here from the stored fields, never copied: flops_per_step x steps/s / (peak x devices),
    steps/s = images_per_s / (2 x batch). SwiMDiff rows give their speed relative to MoCo and
    SimCLR rows of the same group, config variant and input.
    """
    rows = [r for p in payloads for r in p.get("rows", []) if r.get("rsjax") and not r.get("rsjax_conv")]
    if not rows:
        return "_No bench results yet (`results/bench_*.json`)._\n"
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        prov = r.get("provenance") or {}
        m = prov.get("machine") or {}
        key = (
            r["rsjax"].get("num_devices", 1),
            r["rsjax"].get("device", "?"),
            str(prov.get("date", "?"))[:10],
            m.get("jax", "?"),
        )
        groups.setdefault(key, []).append(r)

    def ips(r):
        return r["rsjax"].get("images_per_s")

    blocks = []
    for (ndev, kind, date, jax_v), grp in groups.items():
        torch_v = sorted(
            {
                v
                for r in grp
                for v in (
                    ((r.get("peer") or {}).get("framework") or "").removeprefix("torch "),
                    ((r.get("provenance") or {}).get("machine") or {}).get("torch"),
                )
                if v
            }
        )
        by_key = {(r["rsjax"].get("method"), r.get("config", "").rsplit(":", 1)[-1], r.get("input")): r for r in grp}
        lines = [
            f"**{ndev}x {kind}, {date}** (jax {jax_v}" + (f", torch {'/'.join(torch_v)}" if torch_v else "") + ")",
            "",
            "| config (`--config=...`) | input | rsjax img/s | step ms median (p10-p90) | TFLOP / step | MFU "
            "| compile s | peak GiB | peer img/s (same run) | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        peaks, sources, commands = set(), set(), []
        for r in grp:
            x = r["rsjax"]
            ann = f"{x.get('model', '?')}, {x.get('image_size', '?')} px, b{x.get('batch_size', '?')}"
            if x.get("diffusion_size"):
                ann += f", denoiser at {x['diffusion_size']} px"
            flops, peak, b = x.get("flops_per_step"), x.get("peak_flops_per_s"), x.get("batch_size")
            mfu = (flops * ips(r) / (2 * b) / (peak * x.get("num_devices", 1))) if (flops and peak and ips(r)) else None
            peaks.add((peak, x.get("peak_source")))
            peer, ratio = r.get("peer") or {}, ""
            peer_s = "-"
            if peer.get("images_per_s"):
                mode = peer.get("mode", "?") + (", no augmentation" if r.get("input") == "device_augment" else "")
                peer_s = f"{peer['images_per_s']:,.0f} ({mode})"
                ratio = f"**{ips(r) / peer['images_per_s']:.2f}x**"
            elif peer.get("error"):
                peer_s = "not timed: " + peer["error"][:60].replace("|", "/")
            if x.get("method") == "swimdiff":
                variant = r.get("config", "").rsplit(":", 1)[-1]
                rel = [
                    f"{ips(r) / ips(o):.2f}x of {name}"
                    for meth, name in (("moco", "MoCo"), ("simclr", "SimCLR"))
                    if (o := by_key.get((meth, variant, r.get("input")))) and ips(o)
                ]
                ratio = ", ".join(rel) or ratio
            lines.append(
                f"| `{r.get('config', '?')}` ({ann}) | {r.get('input', '?')} | {ips(r):,.0f} "
                f"| {x.get('step_ms_median', 0):.4g} ({x.get('step_ms_p10', 0):.4g}-{x.get('step_ms_p90', 0):.4g}) "
                f"| {'n/a' if not flops else f'{flops / 1e12:.2f}'} | {'n/a' if mfu is None else f'{mfu:.1%}'} "
                f"| {_secs(x.get('compile_s'))} "
                f"| {'n/a' if x.get('peak_memory_gb') is None else format(x['peak_memory_gb'], '.1f')} "
                f"| {peer_s} | {ratio or '-'} |"
            )
            prov = r.get("provenance") or {}
            commands.append(prov.get("command", "?"))
            if prov.get("source"):
                sources.add(prov["source"])
        lines.append("")
        lines += [
            f"Peak for MFU: {p / 1e12:,.0f} TFLOP/s per device ({src or 'source not recorded'})."
            for p, src in sorted(peaks, key=str)
            if p
        ]
        lines += [f"Source: {s}." for s in sorted(sources)]
        lines.append("Commands: " + "; ".join(f"`{c}`" for c in commands))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def render_bench_cpu_table(payloads: list[dict]) -> str:
    """Markdown table of CPU bench rows (``python -m rsjax.bench ... --conv=lax,auto --peer=torch``,
    files ``bench_cpu_*.json``): per row the step's img/s under each convolution formulation
    (``rsjax_conv``) and the torch eager peer's from the same run, ratios computed here from the
    stored img/s, GFLOP/s and fraction of the CPU's FP32 peak (``auto``), compile seconds."""
    rows = [r for p in payloads for r in p.get("rows", []) if r.get("rsjax_conv")]
    if not rows:
        return "_No CPU bench results yet (`results/bench_cpu_*.json`)._\n"
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        prov = r.get("provenance") or {}
        m = prov.get("machine") or {}
        key = (
            m.get("cpu_model") or "?",
            m.get("cpu_count", "?"),
            str(prov.get("date", "?"))[:10],
            m.get("jax", "?"),
            (prov.get("git") or {}).get("commit", "?"),
        )
        groups.setdefault(key, []).append(r)
    blocks = []
    for (cpu, ncpu, date, jax_v, commit), grp in groups.items():
        torch_v = sorted({(r.get("peer") or {}).get("framework", "").removeprefix("torch ") for r in grp} - {""})
        lines = [
            f"**CPU: {cpu}, {ncpu} cores, {date}** (jax {jax_v}"
            + (f", torch {'/'.join(torch_v)}" if torch_v else "")
            + f", commit {commit}; float32, every figure of a row from one process)",
            "",
            "| config (`--config=...`) | rsjax `lax` img/s | rsjax `auto` img/s | auto / lax "
            "| torch eager img/s | auto / torch | GFLOP / step | GFLOP/s (`auto`) | of FP32 peak | compile s (lax / auto) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        peaks, commands = set(), []
        for r in grp:
            conv = r["rsjax_conv"]
            lax_r, auto_r = conv.get("lax") or {}, conv.get("auto") or {}
            x = auto_r or r["rsjax"]
            ann = f"{x.get('method', '?')}, {x.get('model', '?')}, {x.get('image_size', '?')} px, b{x.get('batch_size', '?')}"
            if x.get("diffusion_size"):
                ann += f", denoiser at {x['diffusion_size']} px"
            li, ai = lax_r.get("images_per_s"), auto_r.get("images_per_s")
            peer = r.get("peer") or {}
            pi = peer.get("images_per_s")
            fl = x.get("flops_per_step")
            peaks.add(x.get("peak_source"))
            lines.append(
                f"| `{r.get('config', '?')}` ({ann}) | {_num(li)} | {_num(ai)} "
                f"| {f'**{ai / li:.2f}x**' if li and ai else '-'} "
                f"| {_num(pi) if pi else ('not timed: ' + peer['error'][:50].replace('|', '/') if peer.get('error') else '-')} "
                f"| {f'{ai / pi:.2f}x' if ai and pi else '-'} | {f'{fl / 1e9:.2f}' if fl else 'n/a'} "
                f"| {_num(x.get('gflops_per_s'))} | {_frac(x.get('mfu'))} "
                f"| {_sec1(lax_r.get('compile_s'))} / {_sec1(auto_r.get('compile_s'))} |"
            )
            commands.append((r.get("provenance") or {}).get("command", "?"))
        lines.append("")
        lines += [f"FP32 peak: {src}." for src in sorted(p for p in peaks if p)]
        lines.append("Commands: " + "; ".join(f"`{c}`" for c in commands))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _pct_of(fraction: float) -> str:
    return f"{100 * float(fraction):g} %"


def _dubai_score(run: dict, fraction: str, decoder: str, cls: str | None = None):
    """A run's fine-tune mIoU (or the IoU of class ``cls``) at ``fraction`` with ``decoder``; None if absent."""
    d = ((run.get("finetune") or {}).get(fraction) or {}).get("decoders", {}).get(decoder)
    if not d or "error" in run:
        return None
    return d["miou"] if cls is None else (d.get("per_class_iou") or {}).get(cls)


def _analysis_end(run: dict) -> dict:
    """The last per-layer analysis row of a supervised run: Fisher ratio per level and mean
    relative weight change of the encoder's and of the decoder's groups."""
    rows = (run.get("pretrain") or {}).get("analysis") or []
    if not rows:
        return {}
    last = rows[-1]
    w = last.get("weights") or {}
    mean = lambda vals: sum(vals) / len(vals) if vals else None  # noqa: E731
    return {
        "fisher": last.get("fisher") or {},
        "enc_change": mean(
            [v["rel_change"] for g, v in w.items() if g.startswith("enc_") and v.get("rel_change") is not None]
        ),
        "dec_change": mean(
            [v["rel_change"] for g, v in w.items() if g.startswith("dec_") and v.get("rel_change") is not None]
        ),
    }


def _deepest(fisher: dict, prefix: str):
    """The Fisher ratio of the last level named ``prefix...`` (``enc_c4``, ``dec_block4``), or None."""
    names = sorted(k for k in fisher if k.startswith(prefix))
    return fisher[names[-1]] if names else None


def _avg(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _f(v, fmt=".2f") -> str:
    return "" if v is None else format(v, fmt)


def render_dubai_table(payloads: list[dict]) -> str:
    """Markdown of the Dubai study (files ``dubai_<setting>_<arm>.json``, job
    ``rsjax.jobs.study_dubai``), one block per setting, rows in ``arm_index`` order.

    Per arm and label fraction: the fine-tuned mIoU on the test tiles (mean ± sample sd over
    seeds, then per seed); per-class IoU (means); the paired differences of
    ``payload["comparisons"]`` (first arm minus second, over the seeds both have) with their 95 %
    t-interval (:func:`paired_interval`); the mechanism: the noisy labels' pixel agreement with
    the clean ones, the per-layer analysis at the end of pretraining (Fisher ratio of the
    encoder's last stage and the decoder's last block, mean relative weight change of encoder and
    decoder), FALSE's firing at its threshold (anchors calibrated per logged step, logged steps
    with any) and over the threshold range (anchors calibrated per batch of real crops, trained /
    untrained encoder, per FNSD mode)."""
    if not payloads:
        return "_No Dubai study results yet (`results/dubai_*.json`)._\n"
    blocks = []
    for setting, rows in _by_setting(payloads):
        st = rows[0].get("settings", {})
        fracs = [f"{float(f):g}" for f in st.get("label_fractions", [])]
        decs = st.get("decoders", ["unet"])
        classes = st.get("class_names", [])
        lines = [
            f"**`{setting}`**: {st.get('dataset', '?')}, {st.get('model', '?')} encoder, "
            f"{st.get('image_size', '?')} px crops, {st.get('num_train', '?')} training crops; pretraining "
            f"{st.get('pretrain_steps', '?')} steps of {st.get('pretrain_batch', '?')}; fine-tuning "
            f"{st.get('finetune_steps', '?')} steps of {st.get('finetune_batch', '?')} "
            f"({', '.join(decs)}, decoder widths {st.get('decoder_channels', '?')}) on a fraction of the "
            f"training crops with clean labels; scored on {st.get('num_test', '?')} (of {st.get('num_test_all', '?')}) "
            f"crops of test tiles "
            # test_tiles: records written before data.test_tiles was renamed data.test_scenes
            f"{', '.join(str(t) for t in st.get('test_scenes', st.get('test_tiles', [])))} (mIoU %, {len(classes)} classes)",
            "",
        ]
        cols = [(d, f) for d in decs for f in fracs]
        head = " | ".join(f"{d} {_pct_of(f)} labels" for d, f in cols)
        lines += [
            f"| arm | {head} | per seed | pretrain s | arm wall s | device | date | commit |",
            "|" + "---|" * (7 + len(cols)),
        ]
        for p in rows:
            runs = p.get("runs", [])
            cells = " | ".join(_mean_sd([_dubai_score(r, f, d) for r in runs]) for d, f in cols)
            per_seed = ", ".join(
                f"s{r.get('seed', '?')}: "
                + ("failed" if "error" in r else " / ".join(_pct(_dubai_score(r, f, d)) for d, f in cols))
                for r in runs
            )
            prov = p.get("provenance", {})
            git = prov.get("git") or {}
            commit = (git.get("commit", "?") + ("-dirty" if git.get("dirty") else "")) if git else "n/a"
            lines.append(
                f"| {p.get('arm', '?')} | {cells} | {per_seed} | {_secs(p.get('pretrain_s'))} "
                f"| {_secs(p.get('wall_s'))} | {_device(prov)} | {str(prov.get('date', '?'))[:10]} | {commit} |"
            )
        lines += [
            "",
            "Mean ± sample sd (ddof = 1) over seeds; every arm of a seed fine-tunes on the same labelled "
            "crops with the same decoder initialisation and batches.",
        ]
        for d, f in cols:
            lines += [
                "",
                f"Per-class IoU (%, mean over seeds), {d}, {_pct_of(f)} labels:",
                "",
                "| arm | " + " | ".join(classes) + " |",
                "|" + "---|" * (1 + len(classes)),
            ]
            for p in rows:
                lines.append(
                    f"| {p.get('arm', '?')} | "
                    + " | ".join(_pct(_avg([_dubai_score(r, f, d, c) for r in p.get("runs", [])])) for c in classes)
                    + " |"
                )
        by_arm = {p.get("arm"): p for p in rows}
        pairs = [
            (a, b)
            for a, b in next((p["comparisons"] for p in rows if p.get("comparisons")), [])
            if a in by_arm and b in by_arm
        ]
        if pairs:
            lines += [
                "",
                "Paired differences (same seeds, first arm minus second, mIoU points; mean [95 % t-interval]):",
                "",
                "| comparison | " + " | ".join(f"{d} {_pct_of(f)} labels" for d, f in cols) + " |",
                "|" + "---|" * (1 + len(cols)),
            ]
            for a, b in pairs:
                cells = []
                for d, f in cols:
                    score = lambda arm: {
                        r["seed"]: v
                        for r in by_arm[arm].get("runs", [])  # noqa: E731
                        if (v := _dubai_score(r, f, d)) is not None
                    }
                    ci = paired_interval(score(a), score(b))
                    cells.append(
                        "n/a"
                        if ci is None
                        else f"{100 * ci['mean']:+.1f} [{100 * ci['lo']:+.1f}, {100 * ci['hi']:+.1f}] (n = {ci['n']})"
                    )
                lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Mechanism (means over seeds): noisy labels' pixel agreement with the clean ones on the training "
            "crops; at the end of pretraining, Fisher ratio of the clean classes (encoder's last stage / decoder's "
            "last block; analysis crops of the test tiles) and mean relative weight change from the "
            "initialisation; FALSE: anchors calibrated per logged step at its threshold, logged steps with any; "
            "refused (non-finite) steps.",
            "",
            "| arm | pretraining labels | pixel agreement | Fisher enc / dec | weight change enc / dec "
            "| calibrated per step | steps firing | refused |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in rows:
            ok = [r for r in p.get("runs", []) if "error" not in r]
            pre = [r.get("pretrain") or {} for r in ok]
            if p.get("kind") == "random_init":
                lines.append(f"| {p.get('arm')} | none | | | | | | |")
                continue
            noise = p.get("noise") or {}
            labels = (
                "views (no labels)"
                if p.get("kind") != "supervised"
                else (
                    f"{len(noise.get('class_names') or []) or len(classes)} classes"
                    + (f", pooled x{noise['pool_factor']}" if (noise.get("pool_factor") or 1) > 1 else "")
                    + (f", {100 * noise['flip_rate']:g} % regions flipped" if noise.get("flip_rate") else "")
                    or ""
                )
            )
            agree = (p.get("agreement") or {}).get("pixel")
            ends = [_analysis_end(r) for r in ok]
            fisher = [e.get("fisher") or {} for e in ends]
            enc_f = _avg([_deepest(fi, "enc_") for fi in fisher])
            dec_f = _avg([_deepest(fi, "dec_") for fi in fisher])
            firing = [x.get("logged_firing") for x in pre if x.get("logged_firing")]
            cal = _avg([x["calibrated_mean"] for x in firing])
            steps_firing = (
                f"{sum(x['steps_firing'] for x in firing)} / {sum(x['rows'] for x in firing)}" if firing else ""
            )
            lines.append(
                f"| {p.get('arm')} | {labels} | {_pct(agree) if agree is not None else ''} "
                f"| {_f(enc_f)}{' / ' + _f(dec_f) if dec_f is not None else ''} "
                f"| {_f(_avg([e.get('enc_change') for e in ends]))}{' / ' + _f(_avg([e.get('dec_change') for e in ends])) if ends and ends[0] else ''} "
                f"| {_f(cal, '.3f')} | {steps_firing} | {sum(x.get('refused_steps', 0) for x in pre)} |"
            )
        sweeps = [
            (p.get("arm"), r["pretrain"]["firing"])
            for p in rows
            for r in p.get("runs", [])
            if "error" not in r and (r.get("pretrain") or {}).get("firing")
        ]
        if sweeps:
            arm0, first = sweeps[0]
            modes = [
                m
                for m in first["trained"]
                if isinstance(first["trained"][m], dict) and "threshold" in first["trained"][m]
            ]
            ts = first["trained"][modes[0]]["threshold"]
            lines += [
                "",
                f"FALSE's selection over the threshold range: anchors calibrated per batch of "
                f"{first['trained'].get('batch_size', '?')} real training crops (mean over "
                f"{first['trained'].get('batches', '?')} batches and the seeds; gated anchors in brackets), "
                f"tau {first['trained'].get('temperature', '?')}, alpha {first['trained'].get('alpha', '?')}:",
                "",
                "| arm | encoder | FNSD mode | " + " | ".join(f"T = {t:g}" for t in ts) + " |",
                "|" + "---|" * (3 + len(ts)),
            ]
            for arm in dict.fromkeys(a for a, _ in sweeps):
                mine = [fi for a, fi in sweeps if a == arm]
                for enc in ("init", "trained"):
                    for m in modes:
                        cells = []
                        for i in range(len(ts)):
                            cal = _avg([fi[enc][m]["false_calibrated"][i] for fi in mine])
                            gated = _avg([fi[enc][m]["false_gated"][i] for fi in mine])
                            cells.append(f"{cal:.2f} ({gated:.0f})")
                        lines.append(f"| {arm} | {enc} | {m} | " + " | ".join(cells) + " |")
        total = sum(p.get("wall_s") or 0.0 for p in rows)
        cmds = sorted({p.get("provenance", {}).get("command", "?") for p in rows})
        lines += [
            "",
            f"Study wall time (every arm and seed, all calls): {total / 60:,.0f} min.",
            "",
            "Command" + ("s" if len(cmds) > 1 else "") + ": " + "; ".join(f"`{c}`" for c in cmds),
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _sec1(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _frac(v) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _num(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


# name -> renderer; SOURCES[name] is the glob (under the results folder) of the files it reads.
RENDERERS = {
    "study": render_study_table,
    "oscd": render_oscd_table,
    "bench": render_bench_table,
    "bench_cpu": render_bench_cpu_table,
    "dubai": render_dubai_table,
}
SOURCES = {
    "study": "study_*.json",
    "oscd": "oscd_*.json",
    "bench": "bench_*.json",
    "bench_cpu": "bench_cpu_*.json",
    "dubai": "dubai_*.json",
}


# ----------------------------------------------------------------------------- README


def _marker(name: str) -> tuple[str, str]:
    return f"<!-- results:{name} -->", f"<!-- /results:{name} -->"


def render_readme(text: str, results_dir: str = "results") -> str:
    """``text`` with every ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` block regenerated."""
    for name, fn in RENDERERS.items():
        start, end = _marker(name)
        i = text.find(start)
        if i < 0:
            continue  # this README does not show that table
        j = text.find(end, i)
        if j < 0:
            raise ValueError(f"README: {start} has no closing {end}")
        body = fn(load_all(SOURCES[name], results_dir))
        text = text[: i + len(start)] + "\n" + body.rstrip("\n") + "\n" + text[j:]
    return text


def update_readme(readme: str = "README.md", results_dir: str = "results", check: bool = False) -> bool:
    """Regenerates the results blocks of ``readme``; returns whether its text changed (needed to).

    With ``check=True`` nothing is written.
    """
    with open(readme) as f:
        old = f.read()
    new = render_readme(old, results_dir)
    if new != old and not check:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(readme)), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(new)
        os.replace(tmp, readme)
    return new != old


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rsjax.results", description=__doc__.split("\n")[0])
    ap.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    ap.add_argument(
        "--docs",
        default=None,
        help="folder of further .md pages with results blocks (default: docs/ beside the README; "
        "'' = the README alone)",
    )
    ap.add_argument("--results-dir", default=os.path.join(REPO, "results"))
    ap.add_argument("--check", action="store_true", help="exit 1 if a page is out of date; write nothing")
    a = ap.parse_args(argv)
    docs = os.path.join(os.path.dirname(os.path.abspath(a.readme)), "docs") if a.docs is None else a.docs
    pages = [a.readme] + (sorted(glob.glob(os.path.join(docs, "*.md"))) if docs else [])
    stale = []
    for page in pages:
        changed = update_readme(page, a.results_dir, check=a.check)
        if a.check and changed:
            stale.append(page)
            print(f"{page} is out of date with {a.results_dir}: run `python -m rsjax.results`", file=sys.stderr)
        elif not a.check:
            print(f"{page} {'updated' if changed else 'unchanged'}")
    if a.check and not stale:
        print(f"{', '.join(pages)}: up to date with {a.results_dir}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
