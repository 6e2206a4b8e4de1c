"""The EuroSAT study job (rsjax.jobs.study_eurosat): it holds its workdir for the whole run and
scores each encoder with the shared evaluators. (The arm-by-arm resume and result records are
tested in tests/test_results.py; arm configs in tests/test_module_lr_scale.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_config


def _config(synth: str, out: str):
    c = load_config("study_eurosat", "smoke")
    c.data.data_dir = synth
    c.study.arms = ""  # random_init only: no pretraining
    c.study.out_dir = out
    c.eval.max_train = 24
    c.eval.max_test = 8
    return c


def test_study_holds_its_workdir_and_scores_with_frozen_eval(tmp_path, monkeypatch):
    from rsjax import errors
    from rsjax import study as study_lib
    from rsjax import workdir as workdir_lib
    from rsjax.data import build
    from rsjax.evaluate import classification as cls
    from rsjax.jobs import study_eurosat

    synth = str(tmp_path / "tfds")
    build.ensure_built("rs_synthetic", synth, config="tiny")
    config = _config(synth, str(tmp_path / "out"))
    wd = str(tmp_path / "wd")
    seen = {}
    real_score = study_eurosat._score

    def score(encode_fn, variables, arrays, cfg, seed):
        with pytest.raises(errors.WorkdirError, match="is in use by another run"):  # a second launch is refused
            workdir_lib.Workdir(wd, study_lib.workdir_config(config))
        r = real_score(encode_fn, variables, arrays, cfg, seed)
        # the same numbers as the shared protocol run directly on the same encoder
        ref = cls.frozen_eval(encode_fn, variables, *arrays, eval_config=cfg.eval, seed=seed)
        seen["ref"] = (ref.metrics["linear_top1"], ref.metrics["knn_top1"])
        seen["n"] = (len(arrays[1]), len(arrays[3]))
        return r

    monkeypatch.setattr(study_eurosat, "_score", score)
    report = study_eurosat.run(config, wd)
    (run,) = report["results"]["random_init"]["runs"]
    assert (run["linear"], run["knn"]) == seen["ref"] and seen["n"] == (24, 8)
    assert np.isfinite(run["linear"]) and report["not_started"] == []
    workdir_lib.Workdir(wd, study_lib.workdir_config(config)).close()  # released when the study ends


def test_study_rejects_bad_keys_before_writing(tmp_path):
    from rsjax import errors
    from rsjax.jobs import study_eurosat

    config = _config(str(tmp_path / "tfds"), "")
    config.study.arms = "simclr,nope"
    with pytest.raises(errors.ConfigError, match=r"unknown arm\(s\) \['nope'\]"):
        study_eurosat.run(config, str(tmp_path / "wd"))
    config.study.arms = "simclr"
    config.study.seeds = "0,x"
    with pytest.raises(errors.ConfigError, match="config.study.seeds"):
        study_eurosat.run(config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_a_failing_arm_is_recorded_and_the_next_arm_starts(tmp_path, monkeypatch):
    """One arm's failure (here: a non-finite loss at every step, as SwiMDiff at a too-high lr)
    ends that arm only: its JSON records the error, the next arm runs and is scored, and a rerun
    keeps the recorded arm instead of retrying it."""
    import json

    from rsjax.data import build
    from rsjax.jobs import study_eurosat

    synth = str(tmp_path / "tfds")
    build.ensure_built("rs_synthetic", synth, config="tiny")
    out = tmp_path / "out"
    config = _config(synth, str(out))
    config.study.arms = "swimdiff,random_init"
    config.eval.linear_epochs = 2
    real = study_eurosat._run_arm_seed

    def run_arm_seed(cfg, arm, seed, arm_wd, arrays, num_train):
        if arm == "swimdiff":
            from rsjax.errors import NonFiniteError

            raise NonFiniteError("5 consecutive non-finite steps (loss nan) at step 5")
        return real(cfg, arm, seed, arm_wd, arrays, num_train)

    monkeypatch.setattr(study_eurosat, "_run_arm_seed", run_arm_seed)
    report = study_eurosat.run(config, str(tmp_path / "wd"))
    failed = json.loads((out / "study_smoke_swimdiff.json").read_text())
    assert failed["linear_mean"] is None and "NonFiniteError" in failed["errors"][0]["error"]
    assert report["results"]["random_init"]["linear_mean"] is not None
    assert (out / "study_smoke_random_init.json").exists()
    calls = []
    monkeypatch.setattr(study_eurosat, "_run_arm_seed", lambda *a: calls.append(a[1]) or real(*a))
    study_eurosat.run(config, str(tmp_path / "wd"))
    assert calls == []  # both arms were recorded: nothing reruns


def test_an_arms_override_stays_in_that_arm(monkeypatch):
    """ARMS overrides of shared keys (optimizer.lr, data.crops_as_scenes, batch_size) change only
    their arm; the study's own keys still reach every other arm, also when set after get_config."""
    import configs.study_eurosat as study_cfg

    arms = dict(study_cfg.ARMS)
    arms["simclr_hot"] = ("simclr", {"optimizer.lr": 0.01, "data.crops_as_scenes": 0, "batch_size": 32})
    monkeypatch.setattr(study_cfg, "ARMS", arms)
    c = study_cfg.get_config("cpu")
    assert c.arms.simclr_hot.optimizer.lr == 0.01 and c.arms.simclr_hot.data.crops_as_scenes == 0
    assert c.arms.simclr_hot.batch_size == 32
    for name in ("simclr", "moco_v2", "swimdiff"):
        assert c.arms[name].optimizer.lr == c.optimizer.lr == 0.3
        assert c.arms[name].batch_size == c.batch_size == 128
    assert c.arms.simclr.data.crops_as_scenes == c.data.crops_as_scenes == 2
    c.optimizer.lr = 0.5  # as --config.optimizer.lr=0.5 does
    c.batch_size = 64
    assert c.arms.simclr.optimizer.lr == 0.5 and c.arms.swimdiff.optimizer.lr == 0.5
    assert c.arms.moco_v2.moco.queue_size == 64 * 16
    assert c.arms.simclr_hot.optimizer.lr == 0.01 and c.arms.simclr_hot.batch_size == 32


def test_last_window_averages_the_logged_cadence_of_the_last_fifth(tmp_path):
    """The mechanism columns: the mean of each metric over the rows of the last 20 % of the steps,
    written out here; a row a stop forced off the cadence (step 93 of a run logged every 10) is
    left out, the last step counts, null values are skipped."""
    from rsjax import study

    rows = [{"step": s, "loss": float(s), "gain": None if s == 90 else 2.0 * s} for s in range(10, 101, 10)]
    rows.insert(9, {"step": 93, "loss": 1e6, "gain": 1e6})  # forced by a stop, then resumed
    rows.append({"step": 97, "loss": 1e6})  # another off-cadence row
    rows = sorted(rows, key=lambda r: r["step"])
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = study.last_window(str(path), 100, 10)
    # steps > 80: 90 and 100 on the cadence
    assert got == {"window_rows": 2, "loss": (90 + 100) / 2, "gain": 200.0}
    assert study.last_window(str(path), 100)["window_rows"] == 4  # without the cadence: every row
