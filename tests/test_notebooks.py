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
ALLOWED_IMPORTS = {"rsjax", "jax", "numpy", "google", "importlib", "os", "sys", "json", "pathlib"}


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
    client = nbclient.NotebookClient(nb, kernel_name=_kernel_name(), timeout=CELL_TIMEOUT_S,
                                     startup_timeout=120,
                                     resources={"metadata": {"path": str(cwd)}})
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
    nb = _run_notebook("02_tpu_pretraining.ipynb", nb_env, RSJAX_NOTEBOOK_WORKDIR=wd)
    text = _text(nb)
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

