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
read the encoder with ``rsjax.checkpoint.load_encoder_for_export``, map it, and ``save_encoder``.

torch is imported lazily, only by the functions that write or read torch files.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Iterable, Mapping

from absl import logging

import numpy as np

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
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
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


def _atomic_write(path: pathlib.Path, write) -> None:
    # Write next to the target then rename, so an interrupted export never leaves a
    # truncated file in place of a good one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
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


def save_encoder(
    state_dict: Mapping[str, np.ndarray], out_path: str | os.PathLike, metadata: Mapping[str, Any]
) -> dict[str, pathlib.Path]:
    """Write ``out_path`` (torch.save of a dict of tensors), a ``.safetensors`` beside it and
    the JSON sidecar ``<out_path>.json`` holding ``metadata`` (bands, mean/std, arch,
    in_channels, step, format, ...).

    If ``out_path`` ends in ``.safetensors`` the torch file is written beside it as ``.pt``.
    Returns ``{"pt": ..., "safetensors": ..., "json": ...}``.
    """
    import torch  # lazy: torch is only needed for export
    from safetensors.torch import save_file

    out = pathlib.Path(out_path)
    if out.suffix == ".safetensors":
        pt_path, st_path = out.with_suffix(".pt"), out
    else:
        pt_path, st_path = out, out.with_suffix(".safetensors")
    json_path = sidecar_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    # A writable C-ordered copy (arrays restored from jax are read-only, which torch warns about).
    tensors = {k: torch.from_numpy(np.array(v, order="C", copy=True)) for k, v in state_dict.items()}
    meta = _jsonable(dict(metadata))
    meta.setdefault("num_tensors", len(tensors))
    _atomic_write(pt_path, lambda tmp: torch.save(tensors, tmp))
    # safetensors metadata must be str -> str.
    st_meta = {"rsjax": json.dumps(meta, sort_keys=True)}
    _atomic_write(st_path, lambda tmp: save_file(tensors, tmp, metadata=st_meta))

    def write_json(tmp):
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic_write(json_path, write_json)
    return {"pt": pt_path, "safetensors": st_path, "json": json_path}


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state dict of torch tensors: safetensors for ``*.safetensors``, otherwise
    ``torch.load(..., weights_only=True)`` (never arbitrary unpickling)."""
    import torch

    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no state dict file at {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    sd = torch.load(str(p), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{p} does not hold a state dict (got {type(sd).__name__})")
    return sd


def _first_conv_key(fmt: str) -> str:
    return ("encoder." if fmt == "smp" else "") + "conv1.weight"


def export_encoder(workdir: str, out: str, *, step: int | None = None, fmt: str = "torchvision") -> dict[str, Any]:
    """Read the encoder of ``workdir`` at ``step`` (latest if None) and write it to ``out``.

    Returns the written paths ({"pt", "safetensors", "json"}).
    """
    # Lazy: the checkpoint module (Orbax) is only needed when actually exporting.
    from rsjax.checkpoint import load_encoder_for_export

    params, batch_stats, meta = load_encoder_for_export(workdir, step)
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
    paths = save_encoder(state, out, metadata)
    logging.info("exported %s (%s, step %s, %d tensors) -> %s", arch, fmt, metadata["step"], len(state), paths)
    return paths
