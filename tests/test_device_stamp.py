""".ci/device/stamp.py: a device run's commit is stamped when it runs, against what was packed."""

import importlib.util
import pathlib
import shutil
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def _stamp():
    spec = importlib.util.spec_from_file_location("stamp", REPO / ".ci" / "device" / "stamp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_blob_hash_is_gits(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"hello\n")
    git = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True).stdout.strip()
    assert _stamp().blob_sha(str(f)) == git


def test_stamp_names_the_commit_only_while_the_files_are_the_commits(tmp_path):
    stamp = _stamp()
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    (repo / "b.txt").write_text("b\n")
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    commit = stamp.pack(str(repo))
    # the device receives a copy without .git
    dev = tmp_path / "device"
    shutil.copytree(repo, dev, ignore=shutil.ignore_patterns(".git"))
    assert stamp.check(str(dev)) == commit
    (dev / "a.py").write_text("x = 2\n")  # edited after packing (or packed dirty)
    assert stamp.check(str(dev)) == commit + "-modified"
    (dev / "a.py").write_text("x = 1\n")
    (dev / "b.txt").unlink()
    assert stamp.check(str(dev)) == commit + "-modified"
