"""configs/ as a package (issue 14): importable from anywhere, get_config's argument parsed by
configs.common.parse_arg, complete and locked blocks, study arms built inside the config, and
old workdirs' configs completed when read."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from conftest import load_config

from rsjax import errors

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_NAMES = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem not in ("__init__", "common"))


def test_configs_import_as_a_package_from_any_directory(tmp_path):
    """`python -c "import configs.swimdiff, configs.common"` works outside the checkout (the
    package is installed with rsjax), and resolves to this checkout's configs/."""
    r = subprocess.run(
        [sys.executable, "-c", "import configs.swimdiff, configs.common; print(configs.common.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert pathlib.Path(r.stdout.strip()).resolve() == (REPO / "configs" / "common.py").resolve()


def test_nothing_loads_a_config_file_by_path():
    hits = [
        str(p.relative_to(REPO))
        for d in ("rsjax", "configs")
        for p in (REPO / d).rglob("*.py")
        if "spec_from_file_location" in p.read_text()
    ]
    assert hits == []


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_variant_builds_a_complete_locked_config(name):
    import importlib

    from rsjax.data.defaults import default_data_config

    mod = importlib.import_module(f"configs.{name}")
    keys = set(default_data_config().keys())
    for variant in mod.VARIANTS:
        c = mod.get_config(variant)
        assert set(c.data.keys()) == keys, (variant, set(c.data.keys()) ^ keys)
        with pytest.raises(AttributeError, match="locked"):
            c.data.typo = 1
        with pytest.raises(AttributeError, match="locked"):
            c.no_such_key = 1


def test_parse_arg_variants_and_typed_pairs():
    from configs import common

    spec = dict(common.RUN_ARGS, fast=False, lr=0.5)
    p = lambda a: common.parse_arg(a, variants=("demo", "smoke"), **spec)  # noqa: E731
    assert p(None).variant == "demo" and p(None).total_steps is None and p(None).fast is False
    assert p("smoke").variant == "smoke"
    a = p("smoke,total_steps=3")
    assert (a.variant, a.total_steps, type(a.total_steps)) == ("smoke", 3, int)
    a = p("variant=smoke,seed=1,lr=2,fast")
    assert (a.variant, a.seed, a.lr, type(a.lr), a.fast) == ("smoke", 1, 2.0, float, True)
    assert p("fast=false").fast is False and p("fast=True").fast is True
    with pytest.raises(errors.ConfigError, match="known variants: demo, smoke; keys: variant, seed"):
        p("nope")
    with pytest.raises(errors.ConfigError, match="'stepz' is not a known key.*total_steps"):
        p("smoke,stepz=3")
    with pytest.raises(errors.ConfigError, match="total_steps='x'.*int"):
        p("total_steps=x")
    with pytest.raises(errors.ConfigError, match="two variants"):
        p("smoke,variant=demo")
    with pytest.raises(errors.ConfigError, match="not a boolean"):
        p("fast=maybe")


def test_get_config_arg_sets_run_keys():
    c = load_config("simclr", "smoke,total_steps=3,seed=7")
    assert (c.total_steps, c.seed, c.model.name) == (3, 7, "tiny")
    assert load_config("simclr", "variant=smoke").total_steps == 4
    with pytest.raises(errors.ConfigError, match="unknown config variant 'smok'"):
        load_config("simclr", "smok")
    with pytest.raises(errors.ConfigError, match="has no key 'total_steps'"):
        load_config("eval_eurosat", "smoke,total_steps=3")


def test_variant_imports_its_base():
    from configs import cd_levir, cd_oscd

    assert cd_oscd.cd_levir is cd_levir
    c = load_config("cd_oscd")
    assert (c.data.name, c.model.in_channels, c.data.crop_size, c.total_steps) == ("oscd", 13, 96, 5000)


def test_study_arms_are_built_in_the_config_and_follow_overrides():
    """Each arm's pretraining config lives in config.arms; the study's shared keys reach every
    arm after get_config (as --config.<key>=... does), the arm's own overrides stay."""
    from rsjax import study

    c = load_config("study_eurosat", "cpu")
    assert sorted(c.arms) == sorted(
        ["simclr", "moco_v2", "moco_v2_matching", "moco_v2_diffusion", "swimdiff", "swimdiff_maps", "false"]
    )
    c.data.folder = "/some/eurosat"
    c.batch_size = 64
    c.optimizer.lr = 0.5
    for arm in c.arms:
        a = study.arm_config(c, arm, seed=3, num_train=640)
        assert (a.data.folder, a.batch_size, a.optimizer.lr, a.seed) == ("/some/eurosat", 64, 0.5, 3)
        assert a.total_steps == 5 * (640 // 64) and a.optimizer.warmup_steps == int(0.05 * a.total_steps)
        assert a.eval.enabled is False and a.model.name == "resnet10_w32"
        # one batch layout for every arm: 2 x 2 quarter crops of each image, no scene sampling
        assert (a.data.crops_as_scenes, a.data.scenes_per_batch) == (2, 0), arm
    # identical batches: every input key (data block, batch, seed, steps) is the same in every arm,
    # and the step's augmentation stream depends on seed and step only (rsjax.train.RNG_STREAMS)
    inputs = {
        arm: (
            study.arm_config(c, arm, 3, 640).data.to_dict(),
            study.arm_config(c, arm, 3, 640).batch_size,
            study.arm_config(c, arm, 3, 640).total_steps,
        )
        for arm in c.arms
    }
    assert all(v == inputs["simclr"] for v in inputs.values())
    assert c.arms.moco_v2.moco.queue_size == 16 * 64


def test_study_factorial_arms_differ_only_in_their_loss_terms():
    """The four MoCo-family arms are the swimdiff config with exactly the factorial's overrides:
    after removing lambda_d, scene_mode, conditioning and the denoiser's optimizer, their
    configs are equal (the candidates, queue, temperature, layout: everything else)."""
    from rsjax import study

    c = load_config("study_eurosat", "cpu")
    expect = {
        "moco_v2": {"loss.scene_mode": "none", "swimdiff.lambda_d": 0.0},
        "moco_v2_matching": {"swimdiff.lambda_d": 0.0},
        "moco_v2_diffusion": {"loss.scene_mode": "none"},
        "swimdiff": {},
        "swimdiff_maps": {"swimdiff.conditioning": "maps"},
    }
    stripped = {}
    for arm, overrides in expect.items():
        assert json.loads(c.arm_sources[arm]) == {"config": "swimdiff", "overrides": overrides}
        d = study.arm_config(c, arm, seed=0, num_train=640).to_dict()
        assert d["moco"]["batch_negatives"] is True
        assert (d["loss"]["scene_mode"], d["swimdiff"]["lambda_d"]) == (
            overrides.get("loss.scene_mode", "soft"),
            overrides.get("swimdiff.lambda_d", 1.0),
        )
        if d["swimdiff"]["lambda_d"]:
            assert d["optimizer"]["modules"]["denoiser"]["name"] == "adam"
        else:
            assert not d["optimizer"]["modules"]
        for block, key in (
            ("loss", "scene_mode"),
            ("swimdiff", "lambda_d"),
            ("swimdiff", "conditioning"),
            ("optimizer", "modules"),
        ):
            d[block].pop(key)
        stripped[arm] = d
    first = stripped.pop("moco_v2")
    for arm, d in stripped.items():
        assert d == first, arm


def _old_workdir(tmp_path, config, drop):
    """A workdir whose config.json was written before the keys ``drop`` existed, with output."""
    from rsjax import workdir as workdir_lib

    d = json.loads(json.dumps(workdir_lib.strict_json(config.to_dict())))
    for dotted in drop:
        *parents, last = dotted.split(".")
        node = d
        for p in parents:
            node = node[p]
        del node[last]
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps(d))
    (wd / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')  # a run happened here
    return wd


def test_old_workdir_missing_keys_at_their_default_resumes(tmp_path):
    from rsjax import workdir as workdir_lib

    config = load_config("simclr", "smoke")
    wd = _old_workdir(tmp_path, config, ["data.crop_size", "data.mask_key", "optimizer.freeze", "optimizer.plateau"])
    workdir_lib.Workdir(str(wd), config).close()  # accepted: the missing keys are at their defaults


def test_old_workdir_missing_key_that_now_differs_is_refused(tmp_path):
    from rsjax import workdir as workdir_lib

    config = load_config("simclr", "smoke")
    wd = _old_workdir(tmp_path, config, ["data.crop_size"])
    config.data.crop_size = 16
    with pytest.raises(workdir_lib.ConfigMismatchError, match=r"data.crop_size: 0 -> 16"):
        workdir_lib.Workdir(str(wd), config)


def test_old_swimdiff_workdir_resumes_only_with_the_conditioning_it_was_written_with(tmp_path):
    """A SwiMDiff workdir from before swimdiff.conditioning existed trained the maps denoiser:
    today's default (both) is refused naming the key; --config.swimdiff.conditioning=maps
    (and log_grad_share=False, as then) resumes it."""
    from rsjax import workdir as workdir_lib

    config = load_config("swimdiff", "smoke")
    wd = _old_workdir(tmp_path, config, ["swimdiff.conditioning", "swimdiff.log_grad_share", "optimizer.modules"])
    with pytest.raises(workdir_lib.ConfigMismatchError, match=r"swimdiff.conditioning: 'maps' -> 'both'"):
        workdir_lib.Workdir(str(wd), config)
    config.swimdiff.conditioning = "maps"
    config.swimdiff.log_grad_share = False
    workdir_lib.Workdir(str(wd), config).close()


def _with_data_eval_split(tmp_path, config, value, drop=()):
    """An old workdir whose data block still has the retired ``eval_split`` = ``value``."""
    wd = _old_workdir(tmp_path, config, drop)
    d = json.loads((wd / "config.json").read_text())
    d["data"]["eval_split"] = value
    (wd / "config.json").write_text(json.dumps(d))
    return wd


@pytest.mark.parametrize(
    "name,drop,moved_to",
    [
        ("study_eurosat", ["eval.train_split", "eval.test_split"], ("eval", "test_split")),
        ("noisy_label", ["analysis.split"], ("analysis", "split")),
    ],
)
def test_retired_data_eval_split_moves_to_the_one_name_of_its_role(tmp_path, name, drop, moved_to):
    """data.eval_split is gone (one name per split role): an old workdir's value is read as
    eval.test_split (the study; eval.* may change on resume) / analysis.split (noisy labels:
    another value than today's is refused naming the new key)."""
    from rsjax import workdir as workdir_lib

    config = load_config(name, "smoke")
    assert "eval_split" not in config.data
    for sub in "ab":
        (tmp_path / sub).mkdir()
    workdir_lib.Workdir(str(_with_data_eval_split(tmp_path / "a", config, "test", drop)), config).close()
    wd = _with_data_eval_split(tmp_path / "b", config, "validation", drop)
    done = workdir_lib.complete_config(json.loads((wd / "config.json").read_text()))
    assert done[moved_to[0]][moved_to[1]] == "validation" and "eval_split" not in done["data"]
    if name == "study_eurosat":
        assert done["eval"]["train_split"] == "train"
    else:
        with pytest.raises(workdir_lib.ConfigMismatchError, match=r"analysis.split: 'validation' -> 'test'"):
            workdir_lib.Workdir(str(wd), config)


def test_read_config_completes_old_configs(tmp_path):
    from rsjax import checkpoint

    config = load_config("simclr", "smoke")
    wd = _old_workdir(tmp_path, config, ["data.normalization", "optimizer.grad_clip"])
    c = checkpoint.read_config(str(wd))
    assert c.data.normalization == "registry" and c.optimizer.grad_clip == 0.0
    assert c.to_dict() == json.loads(json.dumps(config.to_dict()))
