"""rsjax.versions: the line device scripts print first, and the check that stops a mismatched image."""

import subprocess
import sys

from rsjax import versions


def test_this_environment_fits_pyproject():
    errors, _ = versions.problems()
    assert errors == []
    assert versions.line().startswith("python ") and "| flax " in versions.line()


def test_mismatch_and_missing_packages_are_named(tmp_path):
    py = tmp_path / "pyproject.toml"
    py.write_text(
        '[project]\nname = "x"\ndependencies = ["flax>=0.12.10,<0.13", "grain>=0.2", '
        '"tifffile>=2023.1", "jax<0.1; python_version < \'3.0\'"]\n'
    )
    fake = {"flax": "0.12.8", "grain": None, "tifffile": None, "jax": "0.10.2"}
    errors, warnings = versions.problems(str(py), version_of=fake.get)
    assert errors == ["flax 0.12.8 is not in <0.13,>=0.12.10", "grain is not installed (needs >=0.2)"]
    assert warnings == ["tifffile is not installed (needs >=2023.1)"]  # jax's marker does not apply


def test_cli_exit_code(tmp_path):
    py = tmp_path / "pyproject.toml"
    py.write_text('[project]\nname = "x"\ndependencies = ["numpy<1"]\n')
    r = subprocess.run(
        [sys.executable, "-m", "rsjax.versions", "--check", f"--pyproject={py}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == versions.MISMATCH_EXIT and "numpy" in r.stderr and "python " in r.stdout
    ok = subprocess.run(
        [sys.executable, "-m", "rsjax.versions", "--check"], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
