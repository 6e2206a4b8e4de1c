"""PyTorch ResNet ``state_dict`` (timm / torchvision naming) -> Flax encoder trees: the inverse
of :func:`rsjax.export.torch_export.flax_to_torch_state`, read off the same name table
(:func:`~rsjax.export.torch_export.torch_name_table`)::

    torch key                                   flax tree
    <prefix>.weight        (conv, OIHW)         params/<path>/kernel   (HWIO)
    <prefix>.weight / .bias (BatchNorm2d)       params/<path>/scale, params/<path>/bias
    <prefix>.running_mean / .running_var        batch_stats/<path>/mean, batch_stats/<path>/var
    <prefix>.num_batches_tracked                dropped (torch reads it only when momentum=None;
                                                an export writes 0)
    fc.weight, fc.bias                          dropped: the classifier head is not part of the
                                                encoder (reported in the returned ``ignored``)

timm's ``ResNet`` (``timm.create_model("resnet50", in_chans=C)``) and torchvision's use the
same keys for these weights, so both formats read the same table; published checkpoints in
timm naming (torchgeo's SSL4EO-S12 ResNet-18/50 MoCo, DINO, DeCUR) import directly.

Every key of the table must be present with the shape the Flax model expects for ``arch`` and
``in_channels``; a missing, unexpected (anything but ``fc.*`` / ``num_batches_tracked``) or
mis-shaped tensor is refused with a ValueError naming the keys, so a ResNet-50-D stem, a
different depth or a wrapped/prefixed file cannot import silently. Tensors are stored as
float32 (float16 / bfloat16 sources are widened exactly; float64 is rounded).

torch is imported only to read ``.pt`` files and to convert torch tensors.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.errors import ConfigError, DataError
from rsjax.export.torch_export import load_state_dict, torch_name_table
from rsjax.models.resnet import create_encoder

IMPORT_FORMATS = ("timm", "torchvision")
HEAD_PREFIXES = ("fc.",)  # classifier of timm / torchvision ResNets
_WRAPPERS = ("state_dict", "model")  # {"state_dict": {...}} files (Lightning, some releases)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; bfloat16 has no numpy dtype, widen it first
        import torch  # optional dependency (torch): only for the PyTorch side

        t = x.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float32)
        return t.numpy()
    return np.asarray(x)


def _unwrap_file(sd: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    # A checkpoint holding only {"state_dict": {...}} (or {"model": {...}}) carries the weights
    # one level down; anything else is taken as the state dict itself.
    if len(sd) == 1:
        ((k, v),) = sd.items()
        if k in _WRAPPERS and isinstance(v, Mapping):
            return v
    return sd


def expected_shapes(arch: str, in_channels: int, stem: str = "standard") -> tuple[dict, dict]:
    """``(params, batch_stats)`` trees of ``jax.ShapeDtypeStruct`` of the Flax encoder (no init compile)."""
    model = create_encoder(arch, stem=stem)
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 32, 32, int(in_channels)), jnp.float32)
    )
    return shapes["params"], shapes.get("batch_stats", {})


def _node(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _names(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def torch_to_flax_state(
    state_dict: Mapping[str, Any],
    *,
    arch: str,
    in_channels: int,
    fmt: str = "timm",
    stem: str = "standard",
    source: str = "state dict",
) -> tuple[dict, dict, dict]:
    """Map a timm / torchvision ResNet ``state_dict`` to Flax ``(params, batch_stats, report)``.

    ``state_dict``: torch tensors or numpy arrays keyed by torch names. ``report`` holds
    ``ignored`` (head keys dropped), ``num_batches_tracked`` (how many such counters were
    dropped) and ``source_dtypes`` (the distinct floating dtypes read).

    Raises ValueError naming ``source`` and the keys when keys are missing, unexpected, or
    shaped differently from ``arch`` with ``in_channels`` bands, or when a tensor is not floating.
    """
    if fmt not in IMPORT_FORMATS:
        raise ConfigError(f"unknown import format {fmt!r} (--format); choose one of {IMPORT_FORMATS}")
    if int(in_channels) <= 0:
        raise ConfigError(f"in_channels must be > 0 (--in_channels), got {in_channels}")
    state_dict = _unwrap_file(state_dict, source)
    shapes_p, shapes_s = expected_shapes(arch, in_channels, stem)

    # torch key -> (collection, flax path, transpose-to-HWIO?)
    table: dict[str, tuple[str, tuple[str, ...], bool]] = {}
    for fpath, tname, kind in torch_name_table(arch):
        if kind == "conv":
            table[f"{tname}.weight"] = ("params", fpath + ("kernel",), True)
        else:
            table[f"{tname}.weight"] = ("params", fpath + ("scale",), False)
            table[f"{tname}.bias"] = ("params", fpath + ("bias",), False)
            table[f"{tname}.running_mean"] = ("batch_stats", fpath + ("mean",), False)
            table[f"{tname}.running_var"] = ("batch_stats", fpath + ("var",), False)
    counters = {f"{tname}.num_batches_tracked" for _, tname, kind in torch_name_table(arch) if kind == "bn"}

    given = {str(k) for k in state_dict}
    ignored = sorted(k for k in given if k.startswith(HEAD_PREFIXES))
    missing = set(table) - given
    unexpected = given - set(table) - counters - set(ignored)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
    if problems:
        raise DataError(
            f"{source} is not a {fmt} {arch} encoder with the standard stem: "
            + "; ".join(problems)
            + f". Expected {fmt} ResNet keys (conv1.weight, bn1.*, layer1.0.conv1.weight, ...; "
            f"fc.* is ignored); check --arch / --format, or strip a prefix such as 'module.' / "
            f"'backbone.' from the keys first"
        )

    params: dict = {}
    batch_stats: dict = {}
    bad_shape, bad_dtype, dtypes = [], [], set()
    for key, (collection, fpath, is_conv) in table.items():
        x = _to_numpy(state_dict[key])
        src_dtype = str(getattr(state_dict[key], "dtype", x.dtype)).replace("torch.", "")
        if x.dtype.kind != "f":
            bad_dtype.append(f"{key} ({src_dtype})")
            continue
        dtypes.add(src_dtype)
        want = _node(shapes_p if collection == "params" else shapes_s, fpath).shape
        if is_conv:
            if x.ndim != 4:
                bad_shape.append(f"{key} {tuple(x.shape)} (want OIHW {tuple(want[i] for i in (3, 2, 0, 1))})")
                continue
            x = x.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if tuple(x.shape) != tuple(want):
            shown = tuple(x.shape[i] for i in (3, 2, 0, 1)) if is_conv else tuple(x.shape)
            want_t = tuple(want[i] for i in (3, 2, 0, 1)) if is_conv else tuple(want)
            bad_shape.append(f"{key} {shown} (want {want_t})")
            continue
        _set(params if collection == "params" else batch_stats, fpath, np.ascontiguousarray(x, dtype=np.float32))
    if bad_dtype:
        raise DataError(f"{source}: tensors that are not floating point: {_names(bad_dtype)}")
    if bad_shape:
        hint = ""
        if any(k.startswith("conv1.weight ") for k in bad_shape):
            hint = f" (conv1.weight sets the band count: --in_channels={in_channels})"
        raise DataError(
            f"{source}: shapes differ from a {arch} encoder with {in_channels} input bands{hint}: "
            f"{_names(bad_shape, 8)}"
        )
    report = {
        "ignored": ignored,
        "num_batches_tracked": len(counters & given),
        "source_dtypes": sorted(dtypes),
    }
    return params, batch_stats, report


def read_torch_weights(path: str) -> dict[str, Any]:
    """``.safetensors`` via safetensors, anything else via ``torch.load(weights_only=True)``."""
    return load_state_dict(path)
