"""Results as data (rsjax.results): strict JSON, provenance, the study table renderer, the
README check, and the EuroSAT study writing one JSON per finished arm and resuming arm by arm."""

import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np
import pytest

from rsjax import results as R

REPO = pathlib.Path(__file__).resolve().parents[1]


def _strict_load(path):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(pathlib.Path(path).read_text(), parse_constant=refuse)


def test_save_writes_strict_json_non_finite_becomes_null(tmp_path):
    payload = {
        "nan": float("nan"),
        "inf": float("inf"),
        "np_nan": np.float32("nan"),
        "np_ninf": np.float64("-inf"),
        "ok": 0.25,
        "arr": np.array([1.0, np.inf, 2.0]),
        "nested": [{"x": np.int64(3), "y": float("nan")}],
        "flag": np.bool_(True),
    }
    path = R.save(payload, tmp_path / "sub" / "r.json")
    text = pathlib.Path(path).read_text()
    assert "NaN" not in text and "Infinity" not in text
    got = _strict_load(path)
    assert got == {
        "nan": None,
        "inf": None,
        "np_nan": None,
        "np_ninf": None,
        "ok": 0.25,
        "arr": [1.0, None, 2.0],
        "nested": [{"x": 3, "y": None}],
        "flag": True,
    }
    assert os.listdir(tmp_path / "sub") == ["r.json"]  # the temporary file was renamed, none left behind


def test_save_refuses_what_json_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="cannot write"):
        R.save({"x": object()}, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_provenance_fields():
    import datetime

    p = R.provenance("python -m rsjax.main --config=x")
    assert p["command"] == "python -m rsjax.main --config=x"
    date = datetime.datetime.fromisoformat(p["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert p["git"]["commit"] == head.stdout.strip() and isinstance(p["git"]["dirty"], bool)
    else:
        assert p["git"] is None
    m = p["machine"]
    assert m["cpu_count"] == os.cpu_count() and m["backend"] == "cpu" and m["device_count"] >= 1
    assert m["python"] == platform.python_version()
    node = platform.node()
    if len(node) > 3:
        assert node not in json.dumps(p)  # no host name
    # `python -m rsjax.x` puts the module's path in argv[0]: provenance writes it back as -m.
    assert R._argv_command([str(REPO / "rsjax" / "main.py"), "--workdir=w"]) == "python -m rsjax.main --workdir=w"
    assert R._argv_command([str(REPO / "rsjax" / "results.py")]) == "python -m rsjax.results"


def _arm(setting, arm, index, runs, wall_s, pretrain_s, date="2026-11-29T10:00:00+00:00"):
    return {
        "format": "rsjax.study_arm/v1",
        "setting": setting,
        "arm": arm,
        "arm_index": index,
        "settings": {
            "dataset": "eurosat_rgb",
            "model": "resnet18",
            "image_size": 64,
            "epochs": 100,
            "batch_size": 512,
            "dtype": "bfloat16",
            "num_train": 21600,
            "num_test": 5400,
            "knn_k": 20,
        },
        "runs": runs,
        "pretrain_s": pretrain_s,
        "wall_s": wall_s,
        "provenance": {
            "command": "python -m rsjax.main --config=configs/study_eurosat.py:gpu",
            "git": {"commit": "abc1234", "dirty": False},
            "date": date,
            "machine": {"device_count": 1, "device_kinds": ["NVIDIA H200"]},
        },
    }


def _fixture(results_dir):
    """Two arms of one setting, written in reverse order (rows follow arm_index, not file names)."""
    R.save(
        _arm(
            "gpu",
            "simclr",
            1,
            [
                {"seed": 0, "linear": 0.5, "knn": 0.4, "steps": 4200},
                {"seed": 1, "linear": 0.7, "knn": float("nan"), "steps": 4200},
            ],
            123.4,
            60.2,
        ),
        results_dir / "study_gpu_simclr.json",
    )
    R.save(
        _arm("gpu", "random_init", 0, [{"seed": 0, "linear": 0.683, "knn": 0.487, "steps": 0}], 9.6, 0.0),
        results_dir / "study_gpu_random_init.json",
    )


def test_study_renderer_on_fixture(tmp_path):
    _fixture(tmp_path)
    md = R.render_study_table(R.load_all("study_*.json", str(tmp_path)))
    lines = md.splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| arm")]
    # Hand-computed: linear mean (0.5 + 0.7) / 2 = 60.0 %, sample sd 0.1 * sqrt(2) = 14.1; kNN of
    # seed 1 is NaN -> null -> left out of the mean (40.0 from seed 0 alone) and shown as n/a per
    # seed; no run record of the mechanism: its five cells empty (15 cells in every row).
    assert rows == [
        "| random_init | 68.3 | 48.7 | s0: 68.3 / 48.7 | 0 | 0 | 10 | 1x NVIDIA H200 | 2026-11-29 | abc1234 | | | | | |",
        "| simclr | 60.0 ± 14.1 | 40.0 | s0: 50.0 / 40.0, s1: 70.0 / n/a | 4200 | 60 | 123 | 1x NVIDIA H200 "
        "| 2026-11-29 | abc1234 | | | | | |",
    ]
    assert "Study wall time (every arm and seed, all calls): 2 min." in md
    assert {line.count("|") for line in lines if line.startswith("|")} == {16}
    assert lines[0].startswith("**`gpu`**: eurosat_rgb, resnet18, 64 px, 100 epochs, batch 512, bfloat16, 21600 train")
    assert "`python -m rsjax.main --config=configs/study_eurosat.py:gpu`" in md
    assert R.render_study_table([]).startswith("_No study results yet")


def test_study_table_shows_the_mechanism_and_paired_t_intervals(tmp_path):
    """Paired differences over the common seeds with a 95 % t-interval, hand-computed: linear
    differences 2, 4, 3 points -> mean 3.0, sd 1.0, t(0.975, 2) = 4.3027 -> +-2.48 -> [+0.5, +5.5];
    a seed only one arm has is left out of the pairs; the mechanism cells from last_window_mean."""

    def arm(name, index, linear, knn, window=None):
        p = _arm(
            "cpu",
            name,
            index,
            [{"seed": s, "linear": lin, "knn": k, "steps": 840} for s, (lin, k) in enumerate(zip(linear, knn))],
            100.0,
            90.0,
        )
        p["comparisons"] = [["swimdiff", "moco_v2"]]
        if window:
            p["last_window_mean"], p["refused_steps"] = window, 1
        return p

    R.save(arm("moco_v2", 0, [0.68, 0.68, 0.68], [0.60, 0.60, 0.60]), tmp_path / "study_cpu_moco_v2.json")
    R.save(
        arm(
            "swimdiff",
            1,
            [0.70, 0.72, 0.71, 0.99],
            [0.60, 0.60, 0.60, 0.99],
            window={
                "loss_diffusion": 0.08,
                "loss_diffusion_nocond": 0.1,
                "loss_diffusion_shuffled": 0.1,
                "conditioning_gain": 0.2,
                "grad_share_diffusion": 0.25,
                "scene_false_negatives": 13.5,
            },
        ),
        tmp_path / "study_cpu_swimdiff.json",
    )
    md = R.render_study_table(R.load_all("study_*.json", str(tmp_path)))
    assert "| swimdiff − moco_v2 | +3.0 [+0.5, +5.5] (n = 3) | +0.0 [+0.0, +0.0] (n = 3) |" in md
    swim = next(line for line in md.splitlines() if line.startswith("| swimdiff |"))
    assert swim.endswith("| abc1234 | 0.0800 | 20.0 / 20.0 | 25 | 13.5 | 1 |")
    ci = R.paired_interval({0: 1.0, 1: 2.0}, {0: 0.0, 1: 0.0})  # d = 1, 2: mean 1.5, sd 0.707, t(0.975, 1) 12.706
    assert ci["n"] == 2 and abs(ci["hi"] - (1.5 + 12.7062 * 0.70711 / 2**0.5)) < 1e-3
    assert R.paired_interval({0: 1.0}, {0: 0.0}) is None


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rsjax.results", *args], capture_output=True, text=True, cwd=REPO)


def test_check_detects_out_of_date_readme_and_regeneration_fixes_it(tmp_path):
    results_dir = tmp_path / "results"
    _fixture(results_dir)
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\nbefore\n<!-- results:study -->\n| stale | table |\n<!-- /results:study -->\nafter\n")
    args = ["--readme", str(readme), "--results-dir", str(results_dir)]
    check = _run_cli("--check", *args)
    assert check.returncode == 1 and "out of date" in check.stderr
    assert "| stale | table |" in readme.read_text()  # --check writes nothing
    assert _run_cli(*args).returncode == 0
    text = readme.read_text()
    assert "| stale |" not in text and "| simclr | 60.0 ± 14.1 |" in text
    assert text.startswith("# t\n\nbefore\n<!-- results:study -->\n") and text.endswith(
        "<!-- /results:study -->\nafter\n"
    )
    assert _run_cli("--check", *args).returncode == 0
    # A new result makes the README out of date again.
    R.save(
        _arm("gpu", "moco_v2", 2, [{"seed": 0, "linear": 0.9, "knn": 0.8, "steps": 1}], 1.0, 1.0),
        results_dir / "study_gpu_moco_v2.json",
    )
    assert _run_cli("--check", *args).returncode == 1


def test_repo_readme_tables_are_generated_from_results():
    r = _run_cli("--check")
    assert r.returncode == 0, r.stderr
    text = (REPO / "README.md").read_text()
    for name in R.RENDERERS:
        if f"<!-- results:{name} -->" in text:
            assert f"<!-- /results:{name} -->" in text


def test_unclosed_marker_is_a_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:study -->\nno end\n")
    with pytest.raises(ValueError, match="no closing"):
        R.update_readme(str(readme), str(tmp_path))


def test_study_writes_each_arm_json_and_resumes_arm_by_arm(tmp_path):
    """The smoke study: one JSON per finished arm in study.out_dir with provenance; a rerun
    with one more arm and a spent time budget retrains nothing and starts no new arm."""
    from conftest import load_config

    from rsjax.data import build
    from rsjax.jobs import study_eurosat as study

    synth = str(tmp_path / "tfds")
    build.ensure_built("rs_synthetic", synth, config="tiny")

    def cfg(arms, budget=0.0):
        c = load_config("study_eurosat", "smoke")
        c.data.data_dir = synth
        c.study.arms = arms
        c.study.out_dir = str(tmp_path / "out")
        c.study.time_budget_s = budget
        return c

    wd = str(tmp_path / "wd")
    study.run(cfg("simclr"), wd)
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["study_smoke_random_init.json", "study_smoke_simclr.json"]
    s = _strict_load(out / "study_smoke_simclr.json")
    assert s["arm"] == "simclr" and s["setting"] == "smoke" and s["arm_index"] == 1
    (run,) = s["runs"]
    assert run["seed"] == 0 and run["steps"] == 2 and 0.0 <= run["linear"] <= 1.0 and 0.0 <= run["knn"] <= 1.0
    assert s["wall_s"] >= s["pretrain_s"] + s["compile_s"] > 0
    assert s["provenance"]["machine"]["backend"] == "cpu" and s["provenance"]["date"]
    assert s["settings"]["num_train"] > 0 and s["settings"]["max_steps_per_arm"] == 2
    mtime = os.path.getmtime(out / "study_smoke_simclr.json")

    # Rerun: finished arms are reused (the out dir emptied as on a new device call gets them
    # again), swimdiff is not started because the (tiny) time budget is spent.
    for f in os.listdir(out):
        os.unlink(out / f)
    report = study.run(cfg("simclr,swimdiff", budget=1e-9), wd)
    assert report["not_started"] == ["swimdiff"] and sorted(report["results"]) == ["random_init", "simclr"]
    assert _strict_load(out / "study_smoke_simclr.json") == s  # the same record: not retrained
    assert os.path.getmtime(os.path.join(wd, "results", "study_smoke_simclr.json")) <= mtime
    assert not os.path.exists(os.path.join(wd, "swimdiff_s0"))
    md = R.render_study_table(R.load_all("study_*.json", str(out)))
    assert "| simclr |" in md and "| random_init |" in md and "**`smoke`**" in md
