"""Import a published PyTorch ResNet (timm / torchvision naming) as an rsjax workdir.

    python -m rsjax.import_weights --weights=FILE(.pt|.pth|.safetensors) --format=timm|torchvision \
        --arch=resnet18|resnet50 --in_channels=N --workdir=OUT \
        [--normalization=registry|scale:10000] [--data=DATASET_NAME]

The workdir holds what a pretraining run leaves for its users, so every evaluation job takes
it as ``--config.pretrained=OUT`` and ``python -m rsjax.export --workdir=OUT --format=timm``
writes the same tensors back (bit-identical; ``num_batches_tracked`` is written as 0)::

    OUT/config.json              job "import_weights", model {name, stem, in_channels},
                                 data {name, normalization}, imported {file, sha256, format, ...}
    OUT/checkpoints/0/           Orbax: state {params: {encoder}, batch_stats: {encoder}}
    OUT/imported_from.json       where the weights came from (path, sha256, ignored keys, date)

``--normalization`` records the input the weights expect and evaluation jobs refuse a
config that disagrees (pass ``--config.data.normalization=`` the same value):
``registry`` = per-band standardization with the job dataset's statistics (rsjax's own runs);
``scale:10000`` = ``x_raw / 10000`` with no centring (torchgeo's SSL4EO-S12 weights).
``--data`` names the registry dataset whose band order the weights were trained on (e.g.
``ssl4eo_s12``, Sentinel-2 L1C B01..B12 with B8A and B10); evaluation then warns when the job's
dataset orders its bands differently. Without it the band order is left undeclared.

Reading is safe: ``.safetensors`` with safetensors, ``.pt`` / ``.pth`` with
``torch.load(weights_only=True)`` (no arbitrary unpickling). The classifier (``fc.*``) is
dropped and reported; missing, unexpected or mis-shaped keys are refused with their names.
The workdir is assembled in a temporary folder beside OUT and renamed into place, so a
failure leaves no partial workdir; an existing non-empty OUT is refused.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

import rsjax
from rsjax import checkpoint
from rsjax.data import registry
from rsjax.errors import ConfigError, MissingDataError, WorkdirError
from rsjax.export import torch_import
from rsjax.export.torch_import import IMPORT_FORMATS

ARCHS = ("resnet18", "resnet50")
SUFFIXES = (".pt", ".pth", ".safetensors")
SOURCE_FILE = "imported_from.json"

FLAGS = flags.FLAGS


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(path, 0o644)


def import_weights(
    weights: str,
    workdir: str,
    *,
    fmt: str,
    arch: str,
    in_channels: int,
    normalization: str = "registry",
    data: str = "",
) -> dict[str, Any]:
    """Writes the rsjax workdir ``workdir`` from the torch weights file ``weights``.

    Returns ``{"workdir", "config", "report"}``. Raises :class:`rsjax.errors.ConfigError` /
    ``MissingDataError`` / ``DataError`` / ``WorkdirError`` naming the flag or file on bad input,
    before anything is written.
    """
    # -- check every input before reading the file ---------------------------------------------
    if fmt not in IMPORT_FORMATS:
        raise ConfigError(f"--format={fmt!r}: choose one of {IMPORT_FORMATS}")
    if arch not in ARCHS:
        raise ConfigError(f"--arch={arch!r}: choose one of {ARCHS}")
    if int(in_channels) <= 0:
        raise ConfigError(f"--in_channels={in_channels}: must be > 0")
    try:
        normalization = registry.normalization_name(normalization)
    except ValueError as e:
        raise ConfigError(f"--normalization: {e}") from None
    if data:
        try:
            info = registry.get_config_info(data)
        except ValueError as e:
            raise ConfigError(f"--data: {e}") from None
        if info.num_bands != int(in_channels):
            raise ConfigError(
                f"--data={data!r} has {info.num_bands} bands {list(info.bands)} but --in_channels={in_channels}"
            )
    weights = os.path.abspath(weights)
    if not os.path.isfile(weights):
        raise MissingDataError(f"--weights={weights}: no such file")
    if not weights.endswith(SUFFIXES):
        raise ConfigError(f"--weights={weights}: expected a {' / '.join(SUFFIXES)} file")
    out = os.path.abspath(workdir)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise WorkdirError(
            f"--workdir={out} already exists and is not empty; choose a new directory (nothing was written)"
        )

    # -- map the weights (refuses unknown / missing / mis-shaped keys) --------------------------
    sd = torch_import.read_torch_weights(weights)
    params, batch_stats, report = torch_import.torch_to_flax_state(
        sd, arch=arch, in_channels=int(in_channels), fmt=fmt, source=weights
    )

    sha = _sha256(weights)
    imported = {
        "weights": weights,
        "file_name": os.path.basename(weights),
        "sha256": sha,
        "format": fmt,
        "ignored_keys": report["ignored"],
        "num_batches_tracked_dropped": report["num_batches_tracked"],
        "source_dtypes": report["source_dtypes"],
    }
    config = {
        "job": checkpoint.IMPORTED_JOB,
        "method": "imported",
        "seed": 0,
        "model": {"name": arch, "stem": "standard", "in_channels": int(in_channels)},
        "data": {"name": data or "", "builder_config": None, "normalization": normalization},
        "imported": imported,
    }
    source = {
        **imported,
        "arch": arch,
        "in_channels": int(in_channels),
        "normalization": normalization,
        "data": data or None,
        "bands": list(registry.get_config_info(data).bands) if data else None,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rsjax_version": rsjax.__version__,
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0].endswith("import_weights.py") else None,
        "note": ("classifier keys (fc.*) were dropped; num_batches_tracked counters are not kept (an export writes 0)"),
    }

    # -- assemble beside OUT, then rename into place ----------------------------------------------
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(out) + ".import-")
    try:
        os.chmod(tmp, 0o755)
        _write_json(os.path.join(tmp, "config.json"), config)
        _write_json(os.path.join(tmp, SOURCE_FILE), source)
        device = jax.local_devices()[0]
        to_jax = lambda tree: jax.tree.map(lambda a: jax.device_put(np.asarray(a), device), tree)  # noqa: E731
        state = {"params": {"encoder": to_jax(params)}, "batch_stats": {"encoder": to_jax(batch_stats)}}
        manager = checkpoint.make_manager(tmp, max_to_keep=1)
        try:
            checkpoint.save(manager, 0, state, {}, config)
        finally:
            manager.close()
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.rename(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return {"workdir": out, "config": config, "report": report}


def define_flags() -> None:
    # Defined only when run as a program (rsjax.main also defines --workdir).
    flags.DEFINE_string("weights", None, "PyTorch weights: .pt / .pth (torch.load weights_only) or .safetensors.")
    flags.DEFINE_enum("format", None, list(IMPORT_FORMATS), "Key naming of the state dict.")
    flags.DEFINE_enum("arch", None, list(ARCHS), "ResNet architecture of the weights.")
    flags.DEFINE_integer("in_channels", None, "Input bands of the weights (conv1.weight.shape[1]).")
    flags.DEFINE_string("workdir", None, "New rsjax workdir to write (must not exist or be empty).")
    flags.DEFINE_string(
        "normalization",
        "registry",
        "Input the weights expect: 'registry' (per-band standardization with the dataset's "
        "statistics) or 'scale:S' (x_raw / S, e.g. scale:10000 for torchgeo SSL4EO-S12).",
    )
    flags.DEFINE_string(
        "data", "", "Registry dataset whose band order the weights use (e.g. ssl4eo_s12); '' = undeclared."
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # quiet by default (Orbax logs every file); --verbosity=N as given
        logging.set_verbosity(logging.WARNING)
    missing = [f"--{n}" for n in ("weights", "format", "arch", "in_channels", "workdir") if FLAGS[n].value is None]
    if missing:
        raise app.UsageError(f"required: {', '.join(missing)}")
    # An RsjaxError (bad flag, missing file, weights that do not fit) -> one line by run_cli.
    result = import_weights(
        FLAGS.weights,
        FLAGS.workdir,
        fmt=FLAGS.format,
        arch=FLAGS.arch,
        in_channels=FLAGS.in_channels,
        normalization=FLAGS.normalization,
        data=FLAGS.data,
    )
    rep = result["report"]
    if rep["ignored"]:
        print(f"ignored (classifier head, not part of the encoder): {', '.join(rep['ignored'])}")
    cfg = result["config"]
    print(
        f"workdir: {result['workdir']}\n"
        f"use it as: --config.pretrained={result['workdir']} --config.model.name={cfg['model']['name']} "
        f"--config.model.in_channels={cfg['model']['in_channels']} "
        f"--config.data.normalization={cfg['data']['normalization']}"
    )


if __name__ == "__main__":
    from rsjax.errors import run_cli

    define_flags()
    run_cli(main, "rsjax.import_weights")
