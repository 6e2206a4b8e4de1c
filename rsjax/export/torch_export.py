"""Flax ResNet encoder -> PyTorch ``state_dict`` (torchvision / timm / segmentation_models_pytorch).

The mapping is an explicit name table built from the architecture (``torch_name_table``):
every flax module path (see :mod:`rsjax.models.resnet`) maps to one torch module prefix::

    flax params/batch_stats path      torchvision key prefix
    conv1                             conv1
    bn1                               bn1
    layer{i}_{j}/conv{k}              layer{i}.{j}.conv{k}
    layer{i}_{j}/bn{k}                layer{i}.{j}.bn{k}
    layer{i}_{j}/downsample_conv      layer{i}.{j}.downsample.0
    layer{i}_{j}/downsample_bn        layer{i}.{j}.downsample.1

Tensors: conv ``kernel`` [kh, kw, in, out] (HWIO) -> ``weight`` [out, in, kh, kw] (OIHW);
BN ``scale`` -> ``weight``, ``bias`` -> ``bias``, ``mean`` -> ``running_mean``,
``var`` -> ``running_var``, plus ``num_batches_tracked`` (int64 scalar 0; torch only reads it
when ``momentum=None``). No ``fc``: load with ``strict=False`` into a classifier, or delete
``fc`` first.

Formats:

* ``torchvision``: keys as above; loads into ``torchvision.models.resnet18/34/50`` (for
  C != 3 bands replace ``conv1`` by ``nn.Conv2d(C, 64, 7, 2, 3, bias=False)`` first).
* ``timm``: timm's ``ResNet`` (``timm.create_model("resnet50", in_chans=C)``) uses the same
  module names for these weights (``conv1``, ``bn1``, ``layer{i}.{j}.conv{k}/bn{k}``,
  ``downsample.0/.1`` as ``nn.Sequential(conv, norm)``; its activations, drop-block and
  anti-alias slots hold no parameters) and ``nn.BatchNorm2d`` (so ``num_batches_tracked``
  is present); only the classifier differs (``fc``, which is not exported). The default
  timm ``resnet50`` is the same v1.5 (stride on the 3x3) layout. The key set therefore
  equals the torchvision one.
* ``smp``: segmentation_models_pytorch ``ResNetEncoder`` subclasses torchvision's ResNet
  (``fc``/``avgpool`` deleted); inside an smp model (``smp.Unet("resnet50", in_channels=C)``)
  its keys are prefixed ``encoder.``. Load with ``model.load_state_dict(sd, strict=False)``
  (the decoder keys are missing) or strip the prefix for ``model.encoder.load_state_dict(..., strict=True)``.

``export_encoder(workdir, out, step=, fmt=)`` is the whole job behind ``python -m rsjax.export``:
read the encoder with ``rsjax.checkpoint.load_encoder``, map it, and ``save_encoder``.
The JSON sidecar describes the input as well as the weights: ``bands``, ``wavelengths_nm``,
``gsd_m``, ``product_level`` (from :mod:`rsjax.data.registry`), ``scale`` / ``mean`` /
``std`` / ``normalization`` and a ``normalization_formula`` string, plus, for ``--format=timm``
of resnet18/34/50, ``timm_pretrained_cfg_overlay`` (see :func:`timm_overlay`).

torch is imported lazily, only by the functions that write or read torch files.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np
from absl import logging

from rsjax import errors
from rsjax.data import registry
from rsjax.errors import ConfigError, DataError, MissingDataError
from rsjax.models.resnet import ARCHS

FORMATS = ("torchvision", "timm", "smp")
_PREFIX = {"torchvision": "", "timm": "", "smp": "encoder."}


def torch_name_table(arch: str) -> list[tuple[tuple[str, ...], str, str]]:
    """Rows ``(flax_module_path, torch_module_prefix, kind)`` with kind ``"conv"`` or ``"bn"``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} for export; known: {sorted(ARCHS)}")
    stage_sizes, block, _ = ARCHS[arch]
    n_convs = 2 if block == "basic" else 3
    rows: list[tuple[tuple[str, ...], str, str]] = [
        (("conv1",), "conv1", "conv"),
        (("bn1",), "bn1", "bn"),
    ]
    for i, n_blocks in enumerate(stage_sizes, start=1):
        for j in range(n_blocks):
            f, t = f"layer{i}_{j}", f"layer{i}.{j}"
            for k in range(1, n_convs + 1):
                rows.append(((f, f"conv{k}"), f"{t}.conv{k}", "conv"))
                rows.append(((f, f"bn{k}"), f"{t}.bn{k}", "bn"))
            # The first block of every stage has a downsample in torchvision's resnet18/34/50
            # except layer1 of the BasicBlock nets (stride 1, 64 -> 64 channels).
            if j == 0 and (i > 1 or block == "bottleneck"):
                rows.append(((f, "downsample_conv"), f"{t}.downsample.0", "conv"))
                rows.append(((f, "downsample_bn"), f"{t}.downsample.1", "bn"))
    return rows


def _unwrap(tree: Mapping[str, Any], collection: str) -> Mapping[str, Any]:
    # Accept both the bare collection and the full variables dict {"params": ..., ...}.
    if collection in tree and len(tree) <= 2 and all(k in ("params", "batch_stats") for k in tree):
        return tree[collection]
    return tree


def _get(tree: Mapping[str, Any], path: Iterable[str], what: str) -> Any:
    node: Any = tree
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            raise KeyError(f"{what}: missing {'/'.join(path)} (stopped at {p!r})")
        node = node[p]
    return node


def _leaf_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out |= _leaf_paths(v, prefix + (str(k),))
        else:
            out.add(prefix + (str(k),))
    return out


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def flax_to_torch_state(
    params: Mapping[str, Any],
    batch_stats: Mapping[str, Any],
    *,
    arch: str,
    fmt: str = "torchvision",
) -> dict[str, np.ndarray]:
    """Map a flax ResNet encoder (``params``, ``batch_stats``) to a torch-named state dict.

    Returns numpy arrays (float32; ``num_batches_tracked`` int64 scalars). Raises if a
    weight of the table is missing or if the flax tree holds weights the table does not
    know (so a silently dropped layer cannot happen).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    params = _unwrap(params, "params")
    batch_stats = _unwrap(batch_stats, "batch_stats")
    prefix = _PREFIX[fmt]
    out: dict[str, np.ndarray] = {}
    used_p: set[tuple[str, ...]] = set()
    used_s: set[tuple[str, ...]] = set()
    for fpath, tname, kind in torch_name_table(arch):
        key = prefix + tname
        if kind == "conv":
            k = _get(params, fpath + ("kernel",), "params")
            used_p.add(fpath + ("kernel",))
            k = _f32(k)
            if k.ndim != 4:
                raise ValueError(f"params {'/'.join(fpath)}/kernel must be 4-D HWIO, got shape {k.shape}")
            out[key + ".weight"] = np.ascontiguousarray(k.transpose(3, 2, 0, 1))
        else:
            for src, dst, tree, used, what in (
                ("scale", "weight", params, used_p, "params"),
                ("bias", "bias", params, used_p, "params"),
                ("mean", "running_mean", batch_stats, used_s, "batch_stats"),
                ("var", "running_var", batch_stats, used_s, "batch_stats"),
            ):
                out[f"{key}.{dst}"] = _f32(_get(tree, fpath + (src,), what))
                used.add(fpath + (src,))
            out[key + ".num_batches_tracked"] = np.zeros((), dtype=np.int64)
    extra = sorted("/".join(p) for p in (_leaf_paths(params) - used_p)) + sorted(
        "batch_stats:" + "/".join(p) for p in (_leaf_paths(batch_stats) - used_s)
    )
    if extra:
        raise ValueError(f"flax tree has weights not in the {arch} export table: {extra[:8]}")
    return out


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: pathlib.Path, write) -> None:
    # Write next to the target then rename, so an interrupted export never leaves a
    # truncated file in place of a good one. mkstemp creates the file with mode 0600; the
    # renamed file gets the mode any ordinary ``open(path, "w")`` would get (0666 minus the
    # umask: 0644 under the usual 022), so other users can read exported weights.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "tolist") and hasattr(x, "shape"):  # jax arrays
        return np.asarray(x).tolist()
    return x


def sidecar_path(out_path: str | os.PathLike) -> pathlib.Path:
    """``encoder.pt`` -> ``encoder.pt.json``."""
    p = pathlib.Path(out_path)
    return p.with_name(p.name + ".json")


def _pt_path(out: pathlib.Path) -> pathlib.Path:
    return out.with_suffix(".pt") if out.suffix == ".safetensors" else out


def _st_path(out: pathlib.Path) -> pathlib.Path:
    return out if out.suffix == ".safetensors" else out.with_suffix(".safetensors")


def _prepare_out(out: pathlib.Path) -> None:
    """Creates ``out``'s folder; an OSError (a file in the way, a read-only file system, no
    permission) becomes one ConfigError line naming ``--out``."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p = out.parent
        while not p.exists() and p != p.parent:
            p = p.parent
        what = (
            f"{p} is a file, not a folder"
            if p.is_file()
            else f"cannot create the folder {out.parent} ({e.strerror or type(e).__name__})"
        )
        raise ConfigError(f"--out={out}: {what}") from None
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"--out={out}: the folder {out.parent} is not writable")


def save_encoder(
    state_dict: Mapping[str, np.ndarray], out_path: str | os.PathLike, metadata: Mapping[str, Any]
) -> dict[str, pathlib.Path]:
    """Write ``out_path`` (torch.save of a dict of tensors), a ``.safetensors`` beside it and
    the JSON sidecar ``<out_path>.json`` holding ``metadata`` (bands, mean/std, arch,
    in_channels, step, format, ...).

    If ``out_path`` ends in ``.safetensors`` the torch file is written beside it as ``.pt``.
    Each file is written atomically (temporary file + rename) with mode 0666 minus the umask
    (0644 usually). Returns ``{"pt": ..., "safetensors": ..., "json": ...}``.
    """
    import torch  # lazy: torch is only needed for export
    from safetensors.torch import save_file  # optional dependency (safetensors)

    out = pathlib.Path(out_path)
    pt_path, st_path = _pt_path(out), _st_path(out)
    json_path = sidecar_path(out)
    _prepare_out(out)

    # A writable C-ordered copy (arrays restored from jax are read-only, which torch warns about).
    tensors = {k: torch.from_numpy(np.array(v, order="C", copy=True)) for k, v in state_dict.items()}
    meta = _jsonable(dict(metadata))
    meta.setdefault("num_tensors", len(tensors))
    # safetensors metadata must be str -> str.
    st_meta = {"rsjax": json.dumps(meta, sort_keys=True)}

    def write_json(tmp):
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")

    try:
        _atomic_write(pt_path, lambda tmp: torch.save(tensors, tmp))
        _atomic_write(st_path, lambda tmp: save_file(tensors, tmp, metadata=st_meta))
        _atomic_write(json_path, write_json)
    except OSError as e:  # read-only file system, disk full, permission: one line (no partial file stays)
        raise ConfigError(f"--out={out}: cannot write in {out.parent} ({e.strerror or type(e).__name__})") from None
    return {"pt": pt_path, "safetensors": st_path, "json": json_path}


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state dict of torch tensors: safetensors for ``*.safetensors``, otherwise
    ``torch.load(..., weights_only=True)`` (never arbitrary unpickling)."""
    import torch  # optional dependency (torch): only for the PyTorch side

    p = pathlib.Path(path)
    if not p.is_file():
        raise MissingDataError(f"no state dict file at {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file  # optional dependency (safetensors)

        try:
            return load_file(str(p))
        except Exception as e:  # noqa: BLE001 - safetensors' own error type (truncated, not safetensors)
            raise DataError(f"{p} is not a readable .safetensors file ({errors.short(e, 160)})") from None
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError / RuntimeError / EOFError ...
        # torch's message suggests turning the check off: rsjax never runs code from a weights file,
        # so only the reason is kept (a class torch refuses to unpickle, or no pickle at all)
        if "unsupported global" in str(e).lower():
            raise DataError(
                f"{p} holds pickled Python objects besides tensors, which rsjax does not load "
                "(it never unpickles code); save the tensors alone: "
                "torch.save(model.state_dict(), path) or safetensors.torch.save_file"
            ) from None
        why = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        raise DataError(
            f"{p} is not a readable PyTorch state dict ({why.group(1).strip()[:160] if why else errors.short(e, 160)})"
        ) from None
    if not isinstance(sd, dict):
        raise DataError(f"{p} does not hold a state dict (got {type(sd).__name__})")
    return sd


def _first_conv_key(fmt: str) -> str:
    return ("encoder." if fmt == "smp" else "") + "conv1.weight"


# Processing level of the pixels each registered dataset stores (a fallback for registry
# entries without a ``product_level`` attribute). Sentinel-2 levels: L1C = top-of-atmosphere
# reflectance x 1e4, L2A = bottom-of-atmosphere (surface) reflectance x 1e4.
PRODUCT_LEVELS: dict[str, str] = {
    "rs_synthetic": "synthetic (procedural 13-band scenes, L1C-like reflectance x 1e4)",
    "eurosat_ms": "Sentinel-2 L1C",
    "eurosat_rgb": "Sentinel-2 L1C rendered as 8-bit RGB",
    "ssl4eo_s12": "Sentinel-2 L1C",
    "oscd": "Sentinel-2 L1C",
    "dynamic_world": "Sentinel-2 L1C",
    "bigearthnet": "Sentinel-2 L2A",
    "levir_cd": "8-bit RGB (Google Earth imagery)",
    "rs_segmentation": "8-bit aerial / satellite orthophotos",
}

# Architectures timm names identically (``timm.create_model(name)``); tiny / resnet10_w32 are
# rsjax-only widths and depths.
TIMM_ARCHS = ("resnet18", "resnet34", "resnet50")


def data_metadata(meta: Mapping[str, Any], builder_config: str | None = None) -> dict[str, Any]:
    """Sidecar fields that describe the input the encoder expects, from the dataset registry:
    ``wavelengths_nm`` and ``gsd_m`` per band (same order as ``bands``), ``product_level`` and
    ``normalization_formula``. Fields are None when the run has no registered dataset (an
    imported workdir without ``--data``) or when the registry's bands differ from ``bands``.
    """
    out: dict[str, Any] = {"wavelengths_nm": None, "gsd_m": None, "product_level": None, "normalization_formula": None}
    mode = meta.get("normalization") or "registry"
    if str(mode).startswith("scale") and meta.get("scale"):
        out["normalization_formula"] = f"x = x_raw / {float(meta['scale']):g}"
    dataset = meta.get("dataset")
    if not dataset:
        return out
    info = registry.get_config_info(dataset, builder_config)
    bands = list(meta.get("bands") or [])
    if bands and list(info.bands) != bands:
        logging.warning(
            "registry entry %s has bands %s, the run %s: no wavelengths in the sidecar", info.name, info.bands, bands
        )
        return out
    out["wavelengths_nm"] = [float(w) for w in info.wavelengths_nm]
    out["gsd_m"] = [float(g) for g in info.gsd_m]
    out["product_level"] = getattr(info, "product_level", None) or PRODUCT_LEVELS.get(info.name.split("/")[0])
    if out["normalization_formula"] is None:
        formula = getattr(registry, "normalization_formula", None)
        out["normalization_formula"] = (
            formula(info, mode) if formula is not None else f"x[c] = (x_raw[c] / {info.scale:g} - mean[c]) / std[c]"
        )
    return out


def timm_overlay(arch: str, in_channels: int, safetensors_name: str) -> dict[str, Any] | None:
    """How timm loads the export by itself (None for archs timm does not name the same)::

        timm.create_model(arch, pretrained=True, in_chans=C, num_classes=0,
                          pretrained_cfg_overlay={**overlay, "file": <dir>/<overlay["file"]>})

    ``num_classes=0`` in both places keeps timm's load ``strict`` (no classifier is exported).
    """
    if arch not in TIMM_ARCHS:
        return None
    return {
        "file": safetensors_name,
        "num_classes": 0,
        "input_size": [int(in_channels), 224, 224],
        "first_conv": "conv1",
        "classifier": "fc",
    }


def _builder_config_of(workdir: str) -> str | None:
    # The builder config (rs_segmentation/potsdam, ...) is not in the loader's meta; read it
    # from the run's config when the checkpoint module can.
    try:
        read_config = getattr(importlib.import_module("rsjax.checkpoint"), "read_config", None)
        if read_config is None:
            return None
        return read_config(workdir).data.builder_config or None  # completed when read
    except (OSError, ValueError, KeyError, AttributeError) as e:
        logging.warning("could not read the builder config of %s: %s", workdir, e)
        return None


def export_encoder(workdir: str, out: str, *, step: int | None = None, fmt: str = "torchvision") -> dict[str, Any]:
    """Read the encoder of ``workdir`` at ``step`` (latest if None) and write it to ``out``.

    Returns the written paths ({"pt", "safetensors", "json"}).
    """
    # Lazy: the checkpoint module (Orbax) is only needed when actually exporting.
    from rsjax.checkpoint import load_encoder

    if os.path.isdir(out) or str(out).endswith(os.sep):
        raise ConfigError(
            f"--out={out} names a folder; give the .pt file to write, e.g. --out={os.path.join(str(out), 'encoder.pt')}"
        )

    _prepare_out(pathlib.Path(out))  # before the checkpoint is read: a bad --out fails at once
    params, batch_stats, meta = load_encoder(workdir, step)
    arch = meta["arch"]
    state = flax_to_torch_state(params, batch_stats, arch=arch, fmt=fmt)
    # Everything the loader reports (bands, mean/std, scale, method, dataset, ...) goes into
    # the sidecar; the keys below are always present.
    metadata = dict(meta)
    metadata.update(
        arch=arch,
        in_channels=meta.get("in_channels") or int(state[_first_conv_key(fmt)].shape[1]),
        bands=meta.get("bands"),
        mean=meta.get("mean"),
        std=meta.get("std"),
        step=meta.get("step"),
        stem=meta.get("stem", "standard"),
        format=fmt,
        workdir=str(workdir),
    )
    if metadata["stem"] == "cifar":
        metadata["note"] = "cifar stem: conv1 is 3x3/stride 1/padding 1 and there is no max pool (use nn.Identity)"
    builder_config = meta.get("builder_config") or _builder_config_of(str(workdir))
    metadata.update(data_metadata(metadata, builder_config))
    if fmt == "timm" and metadata["stem"] == "standard":
        overlay = timm_overlay(arch, metadata["in_channels"], _st_path(pathlib.Path(out)).name)
        if overlay is not None:
            metadata["timm_pretrained_cfg_overlay"] = overlay
    paths = save_encoder(state, out, metadata)
    logging.info("exported %s (%s, step %s, %d tensors) -> %s", arch, fmt, metadata["step"], len(state), paths)
    return paths
