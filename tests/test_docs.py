"""The README and docs/ stay true: every ``python -m rsjax.main`` command they show loads its
config with every ``--config.<key>=<value>`` override (an unknown key or variant fails here, as it
would for a reader); every other ``python -m rsjax...`` command names a module that exists and
only flags its ``--help`` lists; every relative link points at a file of the repository."""

from __future__ import annotations

import ast
import functools
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from configs import common

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _commands(text: str) -> list[str]:
    """``python -m rsjax...`` commands of a page: from code blocks (with ``\\`` continuations
    joined) and from inline code spans."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = re.findall(r"`(python -m rsjax[^`]*)`", joined)
    for line in joined.splitlines():
        m = re.search(r"(?:^|&&\s*|\$\s*)(python -m rsjax\S*(?:\s+(?!#)\S+)*)", line.strip())
        if m and not line.strip().startswith("|"):
            found.append(m.group(1))
    cmds = {c.split(" #")[0].strip().rstrip(";,") for c in found}
    # prose about commands ("`python -m rsjax...`", "`python -m rsjax.<module>`") is not a command
    return sorted(c for c in cmds if not any(mark in c.split()[2] for mark in ("...", "<")) and c.split()[2] != "rsjax")


ALL = [(page.relative_to(REPO).as_posix(), cmd) for page in PAGES for cmd in _commands(page.read_text())]
MAIN = [(p, c) for p, c in ALL if c.startswith("python -m rsjax.main ")]
OTHER = [(p, c) for p, c in ALL if not c.startswith("python -m rsjax.main ")]


def _value(old, text: str):
    """``text`` as the type of the field it replaces (what ml_collections' flag parser does)."""
    if isinstance(old, bool):
        return {"true": True, "false": False}[text.lower()]
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        return (
            type(old)(float(text))
            if isinstance(old, int) and "." not in text and "e" not in text.lower()
            else float(text)
        )
    if isinstance(old, (tuple, list)):
        return type(old)(ast.literal_eval(text))
    return text


def test_the_pages_show_commands():
    assert len(MAIN) >= 10 and OTHER  # the extraction works (a broken regex would pass vacuously)


@pytest.mark.parametrize("page,cmd", MAIN, ids=[f"{p}:{c[15:70]}" for p, c in MAIN])
def test_main_commands_load_their_config_and_overrides(page, cmd):
    args = shlex.split(cmd.replace("$DATA", "/data"))[3:]
    config_arg = [a for a in args if a.startswith("--config=")]
    assert len(config_arg) == 1, (page, cmd)
    path, _, variant = config_arg[0].split("=", 1)[1].partition(":")
    assert (REPO / path).is_file(), (page, path)
    config = common.load(path, variant or None)
    for a in args:
        if a.startswith("--config.") and "=" in a:
            key, text = a[len("--config.") :].split("=", 1)
            node = config
            *parents, last = key.split(".")
            for p in parents:
                node = node[p]
            assert last in node, (page, cmd, key)
            common.set_key(config, key, _value(node[last], text))
        else:
            assert a.startswith(("--config=", "--workdir=")), (page, cmd, a)


@functools.lru_cache(maxsize=None)
def _help(module: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", module, "--helpfull"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    return r.stdout + r.stderr


@pytest.mark.parametrize("page,cmd", OTHER, ids=[f"{p}:{c[10:60]}" for p, c in OTHER])
def test_other_commands_use_flags_their_module_defines(page, cmd):
    args = shlex.split(cmd)
    module = args[2]
    text = _help(module)
    if module == "rsjax.results":  # argparse, no --helpfull
        text = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
        ).stdout
    assert "No module named" not in text, (page, module)
    for a in args[3:]:
        if a.startswith("--"):
            flag = a[2:].split("=", 1)[0]
            assert re.search(rf"--(\[no\])?{re.escape(flag)}\b", text), (page, cmd, flag)
        if a.startswith("--config=configs/"):  # the config (and variant) a bench command names
            path, _, variant = a.split("=", 1)[1].partition(":")
            common.load(path, variant or None)


def test_relative_links_point_at_files():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), (page.name, target)


def test_readme_is_a_newcomers_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    assert any(line.startswith("pip install -e . && python -m rsjax.main") for line in lines)
