"""Model FLOPs of a JAX function, counted from its jaxpr (backend independent).

Counts 2 x multiply-accumulates of every ``dot_general`` and ``conv_general_dilated``
(forward and, when the function differentiates, the backward ones it contains), recursing
into sub-jaxprs (pjit, custom_jvp/vjp, scan bodies x length, cond: the costliest branch).
Elementwise work is ignored: this is the "model FLOPs" of MFU, not hardware FLOPs. XLA's
own cost analysis is not used because after compilation convolutions become library calls
(cuDNN) that it does not count.

Convolution count. For ``out = conv(lhs, rhs)`` every output element is a dot product over
one kernel window, so

    FLOPs = 2 * |out| * |rhs| / C_out / prod(lhs_dilation)

where ``|rhs| / C_out`` is kernel spatial size x input features per group. ``lhs_dilation``
(d_1, ..., d_n) inserts d_i - 1 zeros between input elements; JAX emits it only for the
input gradient of a strided convolution (a transposed convolution). Of each window's taps
only 1 / prod(d_i) fall on real input elements (rounded at the borders), so without the
division the backward pass of a stride-2 2-D convolution would count 4x its real
multiply-adds. With it, the input gradient of a strided conv counts exactly as much as its
forward (when the input size is a multiple of the stride, e.g. every ResNet stage at 64 /
224 px), and forward + backward of a network is the analytic 3 x forward minus the first
layer's input gradient (tests/test_flops.py). Padding is counted as in the forward pass
(the usual convention of 2 * H_out * W_out * k * k * C_in * C_out). ``rhs_dilation`` (atrous
convs, and the weight gradient of a strided conv) skips taps instead of inserting zeros and
needs no correction.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core as jcore


def _size(shape) -> int:
    return int(math.prod(shape)) if shape else 1


def _eqn_flops(eqn) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        contract = _size([lhs[d] for d in lc])
        return 2.0 * _size(eqn.outvars[0].aval.shape) * contract
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        out_feat_dim = dn.rhs_spec[0]
        per_out = _size(rhs) / rhs[out_feat_dim]  # kernel spatial x in_features / groups
        # Transposed conv (input gradient of a strided conv): the inserted zeros are no work.
        zeros_factor = _size(eqn.params.get("lhs_dilation") or ())
        return 2.0 * _size(eqn.outvars[0].aval.shape) * per_out / zeros_factor
    return 0.0


def _jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        name = eqn.primitive.name
        subs = [v for v in eqn.params.values() if isinstance(v, (jcore.ClosedJaxpr, jcore.Jaxpr))]
        if name == "cond":
            branches = eqn.params.get("branches", ())
            total += max((_jaxpr_flops(b.jaxpr) for b in branches), default=0.0)
            continue
        mult = eqn.params.get("length", 1) if name == "scan" else 1
        for s in subs:
            total += mult * _jaxpr_flops(s.jaxpr if isinstance(s, jcore.ClosedJaxpr) else s)
    return total


def iter_eqns(jaxpr):
    """Every equation of ``jaxpr`` and of its sub-jaxprs (pjit, custom_vjp, scan, cond branches), once each."""
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if isinstance(sub, jcore.ClosedJaxpr):
                    yield from iter_eqns(sub.jaxpr)
                elif isinstance(sub, jcore.Jaxpr):
                    yield from iter_eqns(sub)


def count_flops(fn, *args, **kwargs) -> float:
    """FLOPs of one call of ``fn(*args, **kwargs)`` (args may be ShapeDtypeStructs)."""
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    return _jaxpr_flops(closed.jaxpr)
