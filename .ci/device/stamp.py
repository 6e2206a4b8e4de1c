"""The commit a device run really ran, stamped when it runs, not when it was packed.

The tree sent to a device machine has no .git, so the run cannot ask git. ``pack`` records, in
the checkout, the commit and the git blob hash of every tracked file (``.carry/commit``,
``.carry/manifest.json``; git-ignored); ``check``, on the device at run time, hashes the files it
finds the same way and prints the commit when every tracked file is the commit's, else
``<commit>-modified`` (files edited after packing, or a pack of a dirty tree): what
``RSJAX_GIT_COMMIT`` then carries into every result's provenance.

    python3 .ci/device/stamp.py pack      # here, before the device calls
    python3 .ci/device/stamp.py check     # on the device: prints the stamp (exit 0)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

CARRY = ".carry"


def blob_sha(path: str) -> str:
    """git's object id of the file's content (``git hash-object``)."""
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def pack(root: str = ".") -> str:
    run = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True, check=True).stdout  # noqa: E731
    commit = run("rev-parse", "--short", "HEAD").strip()
    manifest = {}
    for line in run("ls-files", "-s").splitlines():  # "<mode> <sha> <stage>\t<path>"
        meta, path = line.split("\t", 1)
        mode, sha = meta.split()[:2]
        if mode != "160000":  # submodules have no content here
            manifest[path] = sha
    os.makedirs(os.path.join(root, CARRY), exist_ok=True)
    with open(os.path.join(root, CARRY, "manifest.json"), "w") as f:
        json.dump({"commit": commit, "files": manifest}, f)
    with open(os.path.join(root, CARRY, "commit"), "w") as f:
        f.write(commit + "\n")
    return commit


def check(root: str = ".") -> str:
    path = os.path.join(root, CARRY, "manifest.json")
    if not os.path.exists(path):
        return "unknown-no-manifest"
    with open(path) as f:
        m = json.load(f)
    changed = [p for p, sha in m["files"].items()
               if not os.path.isfile(os.path.join(root, p)) or blob_sha(os.path.join(root, p)) != sha]
    return m["commit"] if not changed else f"{m['commit']}-modified"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("pack", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    print(pack() if argv[1] == "pack" else check())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
