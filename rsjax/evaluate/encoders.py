"""The pretrained encoder a downstream job starts from (classification, multi-label, change
detection, segmentation): ``config.pretrained`` read with compatibility checks.

``config.pretrained`` is the workdir of any pretraining run (SimCLR, MoCo, SwiMDiff, FALSE,
noisy-label, ...) or ``''`` for random initialisation; ``config.pretrained_step`` picks a
checkpoint step (0 = latest). The encoder trees come from ``rsjax.checkpoint.load_encoder``; a
checkpoint whose architecture, stem, band count or input normalisation differs from the job's
config is refused with a ConfigError naming both sides (never silently broadcast or
re-initialised).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from rsjax import checkpoint as ckpt_lib
from rsjax.data import registry
from rsjax.errors import ConfigError

PyTree = Any


# --------------------------------------------------------------------------------------
# Pretrained encoders
# --------------------------------------------------------------------------------------
def check_pretrained_meta(meta: Mapping, config, source: str) -> None:
    """Raises ConfigError (one line) naming both sides when the checkpoint's encoder does not fit
    the job."""
    problems = []
    if meta["arch"] != config.model.name:
        problems.append(f"architecture {meta['arch']!r} (checkpoint) vs config.model.name={config.model.name!r}")
    if int(meta["in_channels"]) != int(config.model.in_channels):
        bands = list(meta.get("bands") or [])
        named = f" {bands}" if bands else " (band names not recorded)"
        problems.append(
            f"{meta['in_channels']} input bands{named} (checkpoint) vs "
            f"config.model.in_channels={config.model.in_channels}"
        )
    stem = config.model.get("stem", "standard")
    if meta.get("stem", "standard") != stem:
        problems.append(f"stem {meta.get('stem')!r} (checkpoint) vs config.model.stem={stem!r}")
    # The input the encoder was trained on (imported weights record e.g. "scale:10000").
    norm_ckpt = registry.normalization_name(meta.get("normalization"))
    norm_job = registry.normalization_name(config.data.normalization)
    if norm_ckpt != norm_job:
        problems.append(
            f"input normalization {norm_ckpt!r} (checkpoint) vs config.data.normalization={norm_job!r} "
            f"(pass --config.data.normalization={norm_ckpt})"
        )
    if problems:
        raise ConfigError(f"pretrained encoder {source} does not match the job config: " + "; ".join(problems))


def load_pretrained(config) -> tuple[PyTree, PyTree, dict] | None:
    """``(encoder_params, encoder_batch_stats, meta)`` of ``config.pretrained``, or None for ''."""
    path = config.get("pretrained", "") or ""
    if not path:
        return None

    if not os.path.isdir(path):
        raise ConfigError(
            f"config.pretrained={path!r} is not a directory (a pretraining workdir, or '' for random initialisation)"
        )
    step = int(config.get("pretrained_step", 0) or 0) or None
    params, batch_stats, meta = ckpt_lib.load_encoder(path, step)
    check_pretrained_meta(meta, config, f"{path} (step {meta.get('step')})")
    try:
        data_bands = tuple(registry.data_info(config.data).bands)
    except ValueError:
        data_bands = ()
    if data_bands and tuple(meta.get("bands", ())) and tuple(meta["bands"]) != data_bands:
        print(
            f"WARNING: pretrained encoder was trained on bands {meta['bands']} ({meta.get('dataset')}); "
            f"{config.data.name} has bands {list(data_bands)} (same count, used in that order)",
            flush=True,
        )
    return params, batch_stats, meta


def pretrained_summary(loaded) -> dict:
    if loaded is None:
        return {"init": "random"}
    meta = loaded[2]
    return {"init": "pretrained", **{k: meta[k] for k in ("method", "dataset", "step", "arch") if k in meta}}
