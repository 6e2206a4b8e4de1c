"""Tests only: import torchvision / timm / segmentation_models_pytorch for the export parity tests.

``require(name)`` imports a module or skips the test naming the module and the exception (any
exception, not only ImportError: a torchvision whose compiled ops do not load raises
RuntimeError). With ``RSJAX_REQUIRE_TORCH_LIBS=1`` (set by ``.ci/run``) the skip becomes a
failure, so CI cannot pass with the parity tests silently skipped.

The CPU wheel of torch (``torch==2.13.0+cpu``) installs beside torchvision 0.28.0, whose
``_C.so`` is linked against CUDA libraries (``libc10_cuda.so``, ``libtorch_cuda.so``) that
the CPU wheel does not ship. torchvision then cannot load its extension and
``import torchvision`` fails in ``torchvision/_meta_registrations.py``:
``torch.library.register_fake("torchvision::nms")`` raises ``RuntimeError: operator
torchvision::nms does not exist``. Before the first import of torchvision,
``_register_torchvision_schemas`` tries torchvision's own loader path (``torch.ops.load_library``
on ``torchvision/_C*.so``); only if that fails does it define torchvision's operator schemas
(copied from the ``m.def(...)`` strings compiled into torchvision 0.28.0's ``_C.so``) without
any kernel. Models (``torchvision.models``), timm and smp never call these operators; a call
would raise "could not run torchvision::nms with arguments from the CPU backend". Nothing of
this lives in the library: ``rsjax`` never imports torchvision.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os

import pytest

REQUIRE_ENV = "RSJAX_REQUIRE_TORCH_LIBS"

# torchvision 0.28.0's operator schemas (torchvision/csrc/ops/*.cpp, as compiled into _C.so).
TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, float rois_scale, "
    "int rois_zero_point, float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "bool aligned) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
)

_LIB = None  # the torch.library.Library holding the schemas; must stay alive
_STATE: dict[str, str] = {}


def _register_torchvision_schemas() -> str:
    """Make ``import torchvision`` work; returns how ("own ops", "schemas only", "absent")."""
    global _LIB
    if "how" in _STATE:
        return _STATE["how"]
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        _STATE["how"] = "absent"
        return "absent"
    libs = [p for d in spec.submodule_search_locations for p in glob.glob(os.path.join(d, "_C*.so"))]
    try:
        if not libs:
            raise OSError("torchvision/_C*.so not found")
        torch.ops.load_library(libs[0])
        how = "own ops"
    except OSError as e:
        if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
            how = "own ops"  # already defined (loaded by someone else)
        else:
            _LIB = torch.library.Library("torchvision", "DEF")
            for schema in TORCHVISION_SCHEMAS:
                _LIB.define(schema)
            how = f"schemas only ({type(e).__name__}: {str(e)[:120]})"
    _STATE["how"] = how
    return how


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def require(name: str, *, module_level: bool = False):
    """Import ``name`` (e.g. ``"torchvision.models"``, ``"timm"``) or skip naming the failure;
    with ``RSJAX_REQUIRE_TORCH_LIBS=1`` fail instead of skipping. ``module_level=True`` when
    called at import time of a test module (skips the whole module)."""
    try:
        if name.split(".")[0] in ("torchvision", "timm", "segmentation_models_pytorch"):
            _register_torchvision_schemas()  # timm and smp import torchvision
        return importlib.import_module(name)
    except BaseException as e:  # noqa: BLE001 - any failure (RuntimeError, OSError, ...) is reported
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        msg = f"cannot import {name}: {type(e).__name__}: {e}"
        if required():
            pytest.fail(f"{msg} ({REQUIRE_ENV} is set: torch libraries must be importable)", pytrace=False)
        pytest.skip(msg, allow_module_level=module_level)


def torchvision_ops_mode() -> str:
    """How torchvision's operators are available: "own ops" or "schemas only (...)"."""
    return _STATE.get("how", "not imported")
