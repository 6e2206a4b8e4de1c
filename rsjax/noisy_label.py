"""Task-specific pretraining with noisy labels (CromSS-style), the library part shared by the
``noisy_label`` job and its study (:mod:`rsjax.jobs.noisy_label`, :mod:`rsjax.jobs.noisy_label_study`):
config checks, phases, data, supervised pretraining on noisy masks, transfer to UNet /
DeepLabv3+ / PSPNet. The protocol is in the job's docstring."""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import ml_collections
import numpy as np

from rsjax import errors, optim, train
from rsjax import workdir as workdir_lib
from rsjax.data import arrays as arrays_lib
from rsjax.data import label_noise, registry
from rsjax.data import segmentation as segdata
from rsjax.data.defaults import check_complete
from rsjax.data.segmentation import IGNORE_INDEX, SegData
from rsjax.evaluate import layers, metrics
from rsjax.losses import DICE_REDUCTIONS
from rsjax.tasks import SegmentationTask

DECODERS = ("unet", "deeplabv3plus", "pspnet")


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------
def plateau_config(config):
    """``config.optimizer.plateau`` when the plateau rule is enabled, else None."""
    return config.optimizer.plateau if optim.plateau_enabled(config.optimizer) else None


def validate(config) -> None:
    """Every key the job reads, before anything is written (ConfigError naming ``config.<key>``)."""

    def need(cond, key, msg):  # keys of any depth: errors.require with the dotted key's value
        errors.require(cond, key, _get(config, key), msg)

    with errors.config_errors():
        need(config.total_steps > 0 or config.get("epochs", 0) > 0, "total_steps", "must be > 0 (or set epochs)")
        need(config.get("epochs", 0) >= 0, "epochs", "must be >= 0")
        need(config.batch_size > 0, "batch_size", "must be > 0")
        need(0.0 <= config.noise.flip_rate <= 1.0, "noise.flip_rate", "must be in [0, 1]")
        need(
            config.noise.get("flip_mode", "regions") in label_noise.FLIP_MODES,
            "noise.flip_mode",
            f"must be one of {label_noise.FLIP_MODES}",
        )
        need(config.model.decoder in DECODERS, "model.decoder", f"must be one of {DECODERS}")
        need(
            config.loss.get("dice_reduction", "example") in DICE_REDUCTIONS,
            "loss.dice_reduction",
            f"must be one of {DICE_REDUCTIONS}",
        )
        need(int(config.model.num_classes) >= 2, "model.num_classes", "must be >= 2")
        optim.validate(config.optimizer, "optimizer")
        p = plateau_config(config)
        if p is not None:
            need(0.0 < float(p.get("val_fraction", 0.01)) < 1.0, "optimizer.plateau.val_fraction", "must be in (0, 1)")
            need(int(p.get("every", 0)) >= 0, "optimizer.plateau.every", "must be >= 0 (0 = once per epoch)")
        need(int(config.analysis.get("every", 0)) >= 0, "analysis.every", "must be >= 0 (0 = off)")
        t = config.transfer
        if "freeze_encoder" in t:
            raise errors.ConfigError(
                "config.transfer.freeze_encoder was replaced by config.transfer.optimizer.freeze='encoder/*'"
            )
        if t.get("enabled", True):
            for d in t.decoders:
                need(d in DECODERS, "transfer.decoders", f"unknown decoder {d!r}; expected some of {DECODERS}")
            need(t.total_steps > 0, "transfer.total_steps", "must be > 0")
            need(t.batch_size > 0, "transfer.batch_size", "must be > 0")
            optim.validate(t.optimizer, "transfer.optimizer")
        # the data blocks are complete (read directly below); model vs dataset, from the registry
        check_complete(config.data)
        if t.get("data", None) is not None:
            check_complete(t.data, "config.transfer.data")
        info = registry.data_info(config.data)
        need(
            int(config.model.in_channels) == info.num_bands,
            "model.in_channels",
            f"dataset {config.data.name!r} has {info.num_bands} bands {list(info.bands)}",
        )
        need(int(config.noise.get("pool_factor", 1) or 1) >= 1, "noise.pool_factor", "must be >= 1 (1 = no pooling)")
        cmap = segdata.noise_class_map(config)
        need(
            not cmap or (len(cmap) == info.num_classes and min(cmap) >= 0),
            "noise.class_map",
            f"must give each of the {info.num_classes} classes {list(info.class_names)} of dataset "
            f"{config.data.name!r} a class id >= 0 of the noisy labels' legend",
        )
        k = segdata.noise_num_classes(config, info.num_classes)
        need(
            int(config.model.num_classes) == k,
            "model.num_classes",
            f"the pretraining labels have {k} classes (dataset {config.data.name!r}: {list(info.class_names)}"
            + (f", remapped by config.noise.class_map={cmap}" if cmap else "")
            + ")",
        )
        names = tuple(config.noise.get("class_names", ()) or ())
        need(not names or len(names) == k, "noise.class_names", f"must name the {k} classes of the noisy labels")
        for phase in phases(config, num_train=max(1, int(config.batch_size))):
            phase.validate()


def _get(config, key):
    node = config
    for part in key.split("."):
        node = node.get(part, None) if hasattr(node, "get") else None
    return node


def total_steps(config, num_train: int) -> int:
    """``config.total_steps``, or ``epochs * ceil(num_train / batch_size)`` when ``epochs > 0``
    (the paper's 200 epochs on a dataset of unknown size)."""
    if config.get("epochs", 0):
        return int(config.epochs) * math.ceil(num_train / int(config.batch_size))
    return int(config.total_steps)


def pretrain_phase(config, num_train: int, *, name: str = "pretrain", desc: str = "") -> train.Phase:
    p = train.Phase.from_config(config, name=name, desc=desc or name)
    return dataclasses.replace(p, total_steps=total_steps(config, num_train))


def transfer_phase(config, name: str) -> train.Phase:
    p = train.Phase.from_config(config, config.transfer, name=name, desc=name, where="transfer")
    # the same decoder initialisation and data order for every encoder, not the pretraining's
    return dataclasses.replace(p, seed=int(config.seed) + 1)


def phases(config, num_train: int) -> list[train.Phase]:
    out = [pretrain_phase(config, num_train)]
    if config.transfer.get("enabled", True):
        out += [transfer_phase(config, f"transfer_{d}") for d in config.transfer.decoders]
    return out


def transfer_task_config(config, decoder: str) -> ml_collections.ConfigDict:
    """The keys a transfer's :class:`SegmentationTask` reads: the model with ``decoder`` and the
    transfer's optimizer block (its ``freeze`` decides whether the encoder is frozen)."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.decoder = decoder
    c.optimizer = ml_collections.ConfigDict(config.transfer.optimizer.to_dict())
    return c


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def load_data(config) -> tuple[SegData, SegData]:
    """(pretraining split with clean labels, clean analysis / evaluation split)."""
    d = config.data
    pre = segdata.load_split(d, d.train_split, image_size=d.image_size, max_examples=d.max_train or None)
    ana = segdata.load_split(
        d, config.analysis.split, image_size=d.image_size, max_examples=config.analysis.get("max_images", 0) or None
    )
    return pre, ana


def in_pretraining_legend(config, data: SegData) -> SegData:
    """``data`` (clean labels) in the classes the pretraining learns: remapped by
    ``noise.class_map`` and named by ``noise.class_names`` when the noisy labels have a coarser
    legend, else ``data`` itself (the clean analysis of a pretraining is scored in its legend)."""
    cmap = segdata.noise_class_map(config)
    if not cmap:
        return data
    k = segdata.noise_num_classes(config, len(data.class_names))
    names = tuple(config.noise.get("class_names", ()) or ()) or tuple(f"class_{i}" for i in range(k))
    return dataclasses.replace(data, labels=segdata.remap(data.labels, cmap), class_names=names)


def split_pretraining(config, pre: SegData, labels: np.ndarray):
    """``(train crops, their labels, validation crops with their labels or None)``: with the
    plateau rule on, ``plateau.val_fraction`` of the crops are held out (seeded permutation, as
    CromSS's ``--validation 0.01``) after the noise is added, so the training crops keep the
    labels they would have without a validation split."""
    p = plateau_config(config)
    frac = float(p.get("val_fraction", 0.01)) if p is not None else 0.0
    tr_idx, val_idx = segdata.holdout_split(len(pre), frac, int(config.seed), key="optimizer.plateau.val_fraction")
    if not len(val_idx):
        return pre, labels, None
    val = dataclasses.replace(pre.subset(val_idx), labels=labels[val_idx])
    return pre.subset(tr_idx), labels[tr_idx], val


def iterator(data: SegData, labels: np.ndarray, phase: train.Phase, augment: bool) -> arrays_lib.ArrayIterator:
    def normalize(batch):
        return {"image": data.prepare(batch["image"]), "mask": batch["mask"].astype(np.int32)}

    return arrays_lib.ArrayIterator(
        {"image": data.images, "mask": labels},
        phase.batch_size,
        phase.seed,
        augment=augment,
        transform=normalize,
        source="the scenes of config.data with the labels of config.noise",
    )


def eval_batch_size(mesh) -> int:
    return 8 * mesh.devices.size


_PROBES: dict = {}


def probe_for(model, num_classes: int, levels, data: SegData, mesh) -> layers.SegmentationProbe:
    """One :class:`layers.SegmentationProbe` per (model, classes, levels, dataset, dense recipe):
    equal flax modules share it, so its predict function is compiled once per process (study
    arms, reruns)."""
    info = data.info
    key = (
        model,
        int(num_classes),
        tuple(levels),
        info.name,
        info.scale,
        tuple(info.mean),
        tuple(info.std),
        data.recipe,
        eval_batch_size(mesh),
    )
    if key not in _PROBES:
        _PROBES[key] = layers.SegmentationProbe(
            model,
            num_classes,
            levels,
            info=info,
            recipe=data.recipe,
            batch_size=eval_batch_size(mesh),
            ignore_index=IGNORE_INDEX,
        )
    return _PROBES[key]


# --------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------
def _initial_variables(task, phase: train.Phase, mesh):
    """``(params, batch_stats)`` :func:`train.fit` starts from (same init program and seed)."""
    tx, _ = optim.make(phase.optimizer, phase.total_steps)
    state = jax.device_get(train.create_state(task, tx, phase.seed, mesh))
    return state["params"], state["batch_stats"]


def pretrain(
    config,
    wd,
    mesh,
    data: SegData,
    labels: np.ndarray,
    *,
    val: SegData | None = None,
    analysis_data: SegData | None = None,
    name: str = "pretrain",
    desc: str = "",
) -> dict:
    """Trains the pretraining task on ``(data.images, labels)`` in phase ``name`` of ``wd``.

    Hooks: the plateau rule (``config.optimizer.plateau``, on ``val``) and the per-layer
    analysis (``config.analysis``, on ``analysis_data``, clean labels in the pretraining's legend:
    :func:`in_pretraining_legend`; rows in ``<phase>/analysis.jsonl``, trimmed on resume).
    ``labels`` have ``model.num_classes`` classes. Returns ``{"result": FitResult, "task",
    "analysis": rows, "probe"}``.
    """
    k = int(config.model.num_classes)
    task = SegmentationTask(config, num_classes=k, ignore_index=IGNORE_INDEX)
    phase = pretrain_phase(config, len(data), name=name, desc=desc or name)
    run_dir = wd.sub(name)
    hooks = []
    probe = probe_for(task.model, k, layers.feature_modules(config.model.name, task.decoder_name), data, mesh)
    apath = run_dir.file("analysis.jsonl")
    every = int(config.analysis.get("every", 0)) if analysis_data is not None else 0
    rows = workdir_lib.read_jsonl(apath) if every else []

    def write_rows():
        if run_dir.is_main:
            tmp = apath + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(workdir_lib.dumps(r) + "\n" for r in rows)
            os.replace(tmp, apath)

    if every:
        init_params, init_batch_stats = _initial_variables(task, phase, mesh)

        def analyse(step, params, batch_stats):
            cm, fisher, _ = probe(params, batch_stats, analysis_data.images, analysis_data.labels, desc="analysis")
            rows[:] = [r for r in rows if r["step"] < step]  # a resumed run rewrites what followed its checkpoint
            rows.append(
                {
                    "step": int(step),
                    "miou": metrics.segmentation_scores(cm)["miou"],
                    "fisher": fisher,
                    "weights": layers.weight_stats(jax.device_get(params), init_params),
                }
            )
            write_rows()
            return rows[-1]["miou"]

        if not any(r["step"] == 0 for r in rows):
            analyse(0, init_params, init_batch_stats)

        def analysis_hook(step, state):
            return state, {"analysis_miou": analyse(step, state["params"], state["batch_stats"])}

        hooks.append(train.Hook(every, analysis_hook))

    plateau = plateau_config(config)
    if plateau is not None:
        if val is None or not len(val):
            raise errors.ConfigError(
                "config.optimizer.plateau.enabled needs validation crops (config.optimizer.plateau.val_fraction > 0)"
            )
        kw = optim.plateau_kwargs(config.optimizer)
        p_every = int(plateau.get("every", 0)) or max(1, math.ceil(len(data) / int(config.batch_size)))
        val_probe = probe_for(task.model, k, (), data, mesh)

        def plateau_hook(step, state):
            # CromSS's validation (once per epoch by default), then torch's ReduceLROnPlateau rule
            cm, _, _ = val_probe(state["params"], state["batch_stats"], val.images, val.labels, desc="validate")
            miou = metrics.segmentation_scores(cm)["miou"]
            new = optim.plateau_update(optim.plateau_get(state["opt_state"]), miou, **kw)
            opt_state = optim.plateau_set(state["opt_state"], new)  # keeps the leaves' sharding
            stored = optim.plateau_get(opt_state)  # float32 as stored: what the next validation compares
            return {**state, "opt_state": opt_state}, {
                "val_miou": miou,
                "lr_scale": stored["scale"],
                "best": stored["best"],
                "num_bad": stored["num_bad"],
            }

        hooks.append(train.Hook(p_every, plateau_hook))

    it = iterator(data, labels, phase, augment=True)  # paired random crop / flip / rot90, as the dense jobs
    result = train.fit(task, it, phase, wd, config, mesh=mesh, hooks=hooks)
    return {"result": result, "task": task, "probe": probe, "analysis": rows}


def transfer(
    config,
    wd,
    mesh,
    encoders: dict,
    train_data: SegData,
    test_data: SegData,
    *,
    tagged: bool = True,
    overlay: SegData | None = None,
) -> dict | None:
    """``{encoder tag: {decoder: scores}}``: each encoder (``(params, batch_stats)`` or None =
    random init) fine-tuned with each of ``transfer.decoders`` in phase ``transfer_<tag>_<decoder>``
    (``transfer_<decoder>`` when not ``tagged``) of ``wd`` and scored on ``test_data``. None when
    a phase stopped early (``stop_after_steps``). With ``overlay`` (examples to picture) the
    scores also hold ``overlay_pred``, the fine-tuned model's predictions of them."""
    k = len(train_data.class_names)
    out = {}
    for tag, enc in encoders.items():
        out[tag] = {}
        for dec in config.transfer.decoders:
            name = f"transfer_{tag}_{dec}" if tagged else f"transfer_{dec}"
            pretrained = None if enc is None else (enc[0], enc[1], {})
            task = SegmentationTask(
                transfer_task_config(config, dec),
                num_classes=k,
                ignore_index=IGNORE_INDEX,
                decoder=dec,
                pretrained=pretrained,
            )
            phase = transfer_phase(config, name)
            it = iterator(train_data, train_data.labels, phase, augment=True)
            res = train.fit(task, it, phase, wd, config, mesh=mesh)
            if not res.finished:
                return None
            probe = probe_for(task.model, k, (), test_data, mesh)
            cm, _, _ = probe(
                res.state["params"], res.state["batch_stats"], test_data.images, test_data.labels, desc=f"test {name}"
            )
            s = metrics.segmentation_scores(cm)
            if overlay is not None:
                s["overlay_pred"] = probe(
                    res.state["params"],
                    res.state["batch_stats"],
                    overlay.images,
                    overlay.labels,
                    keep_pred=len(overlay),
                    desc="overlay",
                )[2]
            s["loss_curve"] = [
                {"step": r["step"], "loss": r["loss"]} for r in wd.sub(name).read_metrics() if "loss" in r
            ]
            s["confusion"] = cm.tolist()
            out[tag][dec] = s
            if wd.is_main:
                print(
                    f"  transfer {tag:>12s} -> {dec:<14s} mIoU {s['miou']:.3f}  OA {s['overall_accuracy']:.3f}",
                    flush=True,
                )
    return out


def encoder_of(state) -> tuple:
    """``(encoder params, encoder batch_stats)`` of a train state, on the host."""
    host = jax.device_get({"p": state["params"]["encoder"], "b": state["batch_stats"]["encoder"]})
    return host["p"], host["b"]


def rgb(data: SegData, n: int) -> np.ndarray:
    """Display images [n, H, W, 3] in [0, 1] of the first ``n`` examples (2-98 % stretch)."""

    # stored units: the percentile stretch below is the same for any positive scale
    x = data.images[:n][..., list(registry.rgb_indices(data.info.bands))].astype(np.float32)
    lo, hi = np.percentile(x, 2), np.percentile(x, 98)
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)


# --------------------------------------------------------------------------------------
# The job
