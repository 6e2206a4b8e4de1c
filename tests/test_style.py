"""One formatter and one import order for the repository (``[tool.ruff]`` in pyproject.toml):
``ruff format --check`` and ``ruff check`` (import sorting) pass on every Python file."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PATHS = ("rsjax", "configs", "tfds_builders", "tests")


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail('ruff is missing: `pip install -e ".[test]"` installs it (the style check cannot skip)')
    return subprocess.run([exe, *args, *PATHS], cwd=REPO, capture_output=True, text=True)


def test_code_is_formatted():
    r = _ruff("format", "--check")
    assert r.returncode == 0, "run `ruff format` (pyproject.toml [tool.ruff]):\n" + r.stdout[-3000:] + r.stderr[-2000:]


def test_imports_are_sorted():
    r = _ruff("check")
    assert r.returncode == 0, "run `ruff check --fix` (import order):\n" + r.stdout[-3000:] + r.stderr[-2000:]
