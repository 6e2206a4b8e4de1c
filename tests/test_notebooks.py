"""The Colab notebooks in colab/ run headless, top to bottom, in their smoke setting.

Each notebook is executed with nbclient in a fresh ``python3`` kernel (ipykernel of this
interpreter) in a temporary working directory, with the environment of tests/conftest.py
(8 fake CPU devices, shared XLA compilation cache) plus ``RSJAX_NOTEBOOK_SMOKE=1`` and a tiny
built ``rs_synthetic`` (``RSJAX_NOTEBOOK_DATA_DIR``). 03 exports the run that 01 trained
(``RSJAX_NOTEBOOK_WORKDIR``); run alone it trains its own 2-step run.
"""

from __future__ import annotations

import ast
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "colab"
NOTEBOOKS = sorted(p.name for p in COLAB.glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT_S = 300
# What a notebook may import: rsjax, the standard library, and what rsjax itself is built on.
ALLOWED_IMPORTS = {
    "rsjax",
    "jax",
    "numpy",
    "google",
    "importlib",
    "os",
    "sys",
    "json",
    "pathlib",
    "glob",
    "shutil",
    "subprocess",
}


def _kernel_name() -> str:
    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:  # pragma: no cover - ipykernel installed but no spec found
        pytest.skip(f"no {KERNEL!r} Jupyter kernel spec (pip install ipykernel)")
    return KERNEL


@pytest.fixture(scope="module")
def nb_env(tmp_path_factory):
    """Environment of the notebook kernels + the tiny dataset + a shared quickstart workdir."""
    from rsjax.data import build

    root = tmp_path_factory.mktemp("notebooks")
    data_dir = root / "tfds"
    build.ensure_built("rs_synthetic", str(data_dir), config="tiny")
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    env = {
        **os.environ,
        "XLA_FLAGS": flags,
        "JAX_PLATFORMS": "cpu",
        "RSJAX_NOTEBOOK_SMOKE": "1",
        "RSJAX_NOTEBOOK_DATA_DIR": str(data_dir),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # quiets the debugger warning of frozen modules
    }
    env.pop("MPLBACKEND", None)  # the kernel chooses its inline backend
    return {"root": root, "env": env, "quickstart_workdir": root / "quickstart"}


def _run_notebook(name: str, nb_env: dict, **extra_env) -> nbformat.NotebookNode:
    nb = nbformat.read(COLAB / name, as_version=4)
    cwd = nb_env["root"] / f"cwd_{pathlib.Path(name).stem}"
    cwd.mkdir()
    env = {**nb_env["env"], **{k: str(v) for k, v in extra_env.items()}}
    client = nbclient.NotebookClient(
        nb,
        kernel_name=_kernel_name(),
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(cwd)}},
    )
    try:
        client.execute(env=env, cwd=str(cwd))
    finally:  # the executed notebook, outputs included, for a look after a failure
        nbformat.write(nb, str(cwd / name))
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
            elif "data" in o:
                out.append(o["data"].get("text/plain", ""))
    return "\n".join(out)


def _has_image(nb) -> bool:
    return any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_notebooks_exist_are_clean_and_import_only_rsjax():
    assert NOTEBOOKS == ["01_quickstart.ipynb", "02_tpu_pretraining.ipynb", "03_export_to_pytorch.ipynb"]
    for name in NOTEBOOKS:
        nb = nbformat.read(COLAB / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == KERNEL
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            assert not cell.outputs and cell.execution_count is None, f"{name}: stored outputs"
            # IPython syntax (!shell, %magic) is not Python: blank those lines before parsing.
            src = "\n".join(
                (line[: len(line) - len(line.lstrip())] + "pass") if line.lstrip()[:1] in ("!", "%") else line
                for line in cell.source.splitlines()
            )
            for node in ast.walk(ast.parse(src)):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    mods = [node.module or ""]
                for m in mods:
                    assert m.split(".")[0] in ALLOWED_IMPORTS, f"{name} imports {m}"


def test_01_quickstart(nb_env):
    wd = nb_env["quickstart_workdir"]
    nb = _run_notebook("01_quickstart.ipynb", nb_env, RSJAX_NOTEBOOK_WORKDIR=wd)
    text = _text(nb)
    assert "variant=smoke" in text
    assert "kNN top-1" in text and "linear probe top-1" in text
    assert _has_image(nb), "the loss plot was not displayed"
    assert (wd / "metrics.jsonl").exists() and (wd / "eval_report.json").exists()


def test_02_tpu_pretraining(nb_env):
    wd = nb_env["root"] / "tpu_smoke"
    nb = _run_notebook(
        "02_tpu_pretraining.ipynb", nb_env, RSJAX_NOTEBOOK_WORKDIR=wd, RSJAX_NOTEBOOK_ALLOW_BACKEND="cpu"
    )  # the explicit override of the TPU check
    text = _text(nb)
    assert "backend cpu: ok" in text
    assert "8 devices" in text
    assert "resnet50" in text and "65536" in text  # the paper-scale config was shown
    assert "examples per device" in text
    assert f"Resuming {wd} from step 2" in text
    assert "checkpoints: [2, 4]" in text
    assert _has_image(nb)


def test_03_export_to_pytorch(nb_env):
    # Exports the run of 01 when it ran in this session; otherwise the notebook trains its own.
    wd = nb_env["quickstart_workdir"]
    out = nb_env["root"] / "export"
    nb = _run_notebook("03_export_to_pytorch.ipynb", nb_env, RSJAX_NOTEBOOK_WORKDIR=wd, RSJAX_NOTEBOOK_OUT=out)
    text = _text(nb)
    assert "max |flax - torch| =" in text
    assert '"format": "torchvision"' in text and '"arch": "tiny"' in text
    assert "<All keys matched successfully>" in text
    assert sorted(p.name for p in out.iterdir()) == ["encoder.pt", "encoder.pt.json", "encoder.safetensors"]


# ------------------------------------------------------------------ install cell, backend check


def _install_cell(name: str) -> str:
    nb = nbformat.read(COLAB / name, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and "RSJAX_SOURCE" in c.source]
    assert len(cells) == 1, name
    return cells[0]


def _exec_install_cell(name, monkeypatch, tmp_path, *, source="", which=None, accel=False):
    """Runs the install cell as a fresh runtime would see it: rsjax not importable, pip recorded
    instead of run. Returns the pip argument lists."""
    import glob
    import importlib.util
    import shutil
    import subprocess

    calls = []
    real_find_spec, real_glob = importlib.util.find_spec, glob.glob
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "rsjax" else real_find_spec(n, *a))
    monkeypatch.setattr(subprocess, "check_call", lambda args, **kw: calls.append(list(args)))
    monkeypatch.setattr(shutil, "which", lambda cmd: which if cmd == "nvidia-smi" else None)
    monkeypatch.setattr(
        glob,
        "glob",
        lambda pat, **kw: (
            ["/dev/accel0"] if accel and "accel" in pat else ([] if pat.startswith("/dev/") else real_glob(pat, **kw))
        ),
    )
    monkeypatch.delenv("RSJAX_SOURCE", raising=False)
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    code = _install_cell(name).replace('RSJAX_SOURCE = ""', f"RSJAX_SOURCE = {source!r}", 1)
    exec(compile(code, name, "exec"), {})
    return calls


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_needs_no_placeholder(name, monkeypatch, tmp_path):
    src = _install_cell(name)
    assert "YOUR_ORG" not in src and "git clone" not in src and "[test]" not in src
    extras = "colab,torch" if name.startswith("03") else "colab"
    # Nothing to install from: a clear error, no clone of a made-up URL, no pip call.
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="RSJAX_SOURCE"):
        _exec_install_cell(name, monkeypatch, tmp_path / "empty")  # noqa: PT012
    # From a clone (found next to the notebook, as colab/ of a checkout): the light extra + JAX for a TPU.
    (tmp_path / "clone" / "rsjax").mkdir(parents=True)
    (tmp_path / "clone" / "pyproject.toml").write_text("[project]\nname = 'rsjax'\n")
    (tmp_path / "clone" / "colab").mkdir()
    calls = _exec_install_cell(name, monkeypatch, tmp_path / "clone" / "colab", accel=True)
    assert calls and calls[0][-3:] == ["-e", f"{tmp_path / 'clone'}[{extras}]", "jax[tpu]"]
    # A wheel on a GPU runtime; a git URL on a CPU runtime (no accelerator extra).
    calls = _exec_install_cell(
        name,
        monkeypatch,
        tmp_path / "empty",
        source="/content/rsjax-0.1.0-py3-none-any.whl",
        which="/usr/bin/nvidia-smi",
    )
    assert calls[0][-2:] == [f"/content/rsjax-0.1.0-py3-none-any.whl[{extras}]", "jax[cuda12]"]
    calls = _exec_install_cell(name, monkeypatch, tmp_path / "empty", source="https://example.org/me/rsjax.git")
    assert calls[0][-1] == f"rsjax[{extras}] @ git+https://example.org/me/rsjax.git"


def test_require_backend_refuses_a_cpu_runtime(monkeypatch):
    import jax

    from rsjax import notebook_utils as nbu

    assert jax.default_backend() == "cpu"
    monkeypatch.delenv(nbu.ALLOW_BACKEND_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"backend is 'cpu'.*Change runtime type > TPU.*ALLOW_OTHER_BACKEND"):
        nbu.require_backend("tpu")
    assert nbu.require_backend("tpu", allow_other=True) == "cpu"
    monkeypatch.setenv(nbu.ALLOW_BACKEND_ENV, "gpu, cpu")
    assert nbu.require_backend("tpu") == "cpu"
    # 02 checks the backend before anything is built or trained.
    nb = nbformat.read(COLAB / "02_tpu_pretraining.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    check = next(i for i, s in enumerate(code) if "nbu.require_backend(" in s)
    assert check < next(i for i, s in enumerate(code) if "pretrain.run(" in s)
    assert "ALLOW_OTHER_BACKEND = False" in code[check]
