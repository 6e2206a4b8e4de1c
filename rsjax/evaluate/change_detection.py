"""Change detection job (``config.job = "change_detection"``): siamese encoder + UNet decoder.

Run::

    python -m rsjax.main --config=configs/cd_levir.py --workdir=runs/cd_levir \
        --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<pretraining workdir>
    python -m rsjax.main --config=configs/cd_oscd.py:smoke --workdir=/tmp/smoke

Model: :class:`rsjax.models.decoders.SiameseCDUNet`: one shared-weight ResNet encoder sees
image A and image B, every scale (stem, layer1..4) is fused as ``|f_A - f_B|``, a UNet decodes
one change logit per pixel. The encoder comes from ``config.pretrained`` (any pretraining
run; architecture / stem / band count must match ``config.model``) or random init;
``train.freeze_encoder`` keeps it fixed (inference-mode BatchNorm, no updates).

Loss: ``rsjax.losses.bce_dice`` (binary cross entropy + ``train.dice_weight`` x soft Dice of the
change class); ``train.dice_reduction``: ``example`` (default, rsjax's per-example form) or
``batch`` (torch ``BCEWithLogitsLoss`` + smp ``DiceLoss("binary")`` over the batch, as CromSS builds
it for one output channel). Training batches: random ``train.crop_size`` crops with the same flip /
90-degree rotation for A, B and the change map, a pure function of ``(seed, step)``.
Evaluation: whole test images, change = ``logit > 0``; precision, recall, F1 and IoU of the
change class over all test pixels (:mod:`rsjax.evaluate.metrics`).

Dataset contract (for the ``levir_cd`` / ``oscd`` TFDS builders; read through
``tfds.data_source``): features

* ``image_a``: [H, W, C] uint8 (LEVIR-CD RGB) or uint16 (OSCD, 13 Sentinel-2 bands, reflectance
  x 1e4, band order of the registry entry), first date;
* ``image_b``: same shape and dtype, second date;
* ``change``: [H, W] uint8, 1 = changed, 0 = unchanged (LEVIR's 255 mapped to 1);
  ``data.ignore_index`` (default none) may mark no-data pixels;

splits ``train`` / ``test`` (``val`` optional), images of one split all the same size (LEVIR-CD:
the 1024 px tiles cut into 256 px crops). Other feature names can be mapped with
``data.image_a_key`` / ``data.image_b_key`` / ``data.change_key`` (the synthetic dataset uses
``image`` / ``image2`` / ``change``). Normalisation: the registry entry of ``data.name``.

Writes ``eval_report.json`` (task ``change_detection``), ``metrics.jsonl``, ``loss_curve.png``
and ``change_overlay.png`` (rows of A, B, ground truth, prediction, and an error map on B:
white = hit, red = false alarm, blue = miss).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import losses, plots
from rsjax.data import registry
from rsjax.evaluate import common
from rsjax.evaluate import metrics as M
from rsjax.models import decoders


def load_data(config):
    """``(train, test)`` dicts of raw arrays ``{"a", "b", "change"}``."""
    d = common.data_config(config)
    keys = {"a": d.get("image_a_key", "image_a"), "b": d.get("image_b_key", "image_b"),
            "change": d.get("change_key", "change")}
    ec = config.eval
    train = common.load_fields(d, ec.train_split, keys, max_examples=ec.get("max_train", 0) or None)
    test = common.load_fields(d, ec.test_split, keys, max_examples=ec.get("max_test", 0) or None)
    return train, test


def build_model(config):
    mc = config.model
    return decoders.SiameseCDUNet(mc.name, int(mc.in_channels), stem=mc.get("stem", "standard"),
                                  decoder_channels=tuple(mc.get("decoder_channels", ())) or None,
                                  freeze_encoder=bool(config.train.freeze_encoder),
                                  dtype=common.compute_dtype(config))


def init_variables(config, model, shape, loaded):
    x = jnp.zeros(shape, jnp.float32)
    v = jax.jit(lambda k: model.init(k, x, x, train=False))(jax.random.PRNGKey(config.seed))
    v = {"params": v["params"], "batch_stats": v.get("batch_stats", {})}
    if loaded is not None:
        v = decoders.plug_encoder(v, loaded[0], loaded[1])
    return v


def _check(arrays, info, config, split):
    a, b, ch = arrays["a"], arrays["b"], arrays["change"]
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"{split}: image A {a.shape} and image B {b.shape} must both be [N, H, W, C]")
    if ch.shape != a.shape[:3]:
        raise ValueError(f"{split}: change map {ch.shape} does not match the images {a.shape[:3]}")
    if a.shape[-1] != info.num_bands:
        raise ValueError(f"{split}: images have {a.shape[-1]} bands, dataset {info.name!r} declares "
                         f"{info.num_bands} {list(info.bands)}")
    common.check_bands(config, a.shape[-1], f"dataset {info.name!r}")


def evaluate_arrays(config, wd, train: dict, test: dict, *, info: registry.DatasetInfo | None = None,
                    loaded=None) -> dict:
    """Trains and evaluates on raw arrays ``{"a", "b", "change"}`` (images in stored units)."""
    t0 = time.time()
    info = info or common.dataset_info(config)
    for name, arrays in (("train", train), ("test", test)):
        _check(arrays, info, config, name)
    ignore = config.data.get("ignore_index", None)
    tc = config.train
    model = build_model(config)
    crop = int(tc.crop_size) if int(tc.crop_size) > 0 else train["a"].shape[1]
    variables = init_variables(config, model, (1, crop, crop, train["a"].shape[-1]), loaded)
    tx = common.make_optimizer(tc, int(tc.steps), variables["params"], freeze_encoder=bool(tc.freeze_encoder))

    def loss_fn(params, batch_stats, batch, rng):
        del rng
        logits, upd = model.apply({"params": params, "batch_stats": batch_stats}, batch["a"], batch["b"],
                                  train=True, mutable=["batch_stats"])
        # a scalar for dice_reduction="batch": train_loop's mean leaves it unchanged
        return losses.bce_dice(logits, batch["change"], ignore_index=ignore, dice_weight=tc.dice_weight,
                               reduction=tc.get("dice_reduction", "example")), \
            upd["batch_stats"]

    def batch_fn(step):
        raw = common.sample_batch(train, int(tc.batch_size), crop, config.seed, step)
        return {"a": registry.normalize(raw["a"], info), "b": registry.normalize(raw["b"], info),
                "change": raw["change"].astype(np.int32)}

    variables, _ = common.train_loop(loss_fn=loss_fn, variables=variables, tx=tx, batch_fn=batch_fn,
                                     steps=int(tc.steps), seed=config.seed, wd=wd, desc="change detection",
                                     log_every=int(config.get("log_every", 10)))
    pred = predict(config, model, variables, test, info)
    cm = M.dense_confusion_matrix(pred, test["change"], 2, ignore)
    metrics = {**M.binary_scores(cm), "num_train": int(len(train["a"])), "num_test": int(len(test["a"])),
               "train_steps": int(tc.steps), "freeze_encoder": bool(tc.freeze_encoder),
               "encoder": common.pretrained_summary(loaded), "seconds": time.time() - t0}
    if wd.is_main:
        wd.plot_loss_curve()
        overlay(test, pred, info, os.path.join(wd.path, "change_overlay.png"), n=int(config.eval.get("num_pictures", 4)))
        wd.write_eval_report("change_detection", metrics, config)
        print(f"{config.data.name}: change F1 {metrics['f1']:.4f} IoU {metrics['iou']:.4f} precision "
              f"{metrics['precision']:.4f} recall {metrics['recall']:.4f} ({metrics['num_test']} test pairs)",
              flush=True)
    return metrics


def predict(config, model, variables, test: dict, info) -> np.ndarray:
    """Change predictions {0, 1} uint8 [N, H, W] for whole test images (fixed-size padded batches)."""
    from rsjax import sharding as shd

    mesh = shd.make_mesh()
    rep, dat = shd.replicated(mesh), shd.data_sharded(mesh)
    fwd = jax.jit(lambda v, a, b: model.apply(v, a, b, train=False) > 0, in_shardings=(rep, dat, dat),
                  out_shardings=rep)
    variables = jax.device_put(variables, rep)
    bs = max(mesh.devices.size, (int(config.eval.batch_size) // mesh.devices.size) * mesh.devices.size)
    n = len(test["a"])
    out = []
    for s, e in common.eval_batches(n, bs, "predict test"):
        a = common.pad_to(registry.normalize(test["a"][s:e], info), bs)
        b = common.pad_to(registry.normalize(test["b"][s:e], info), bs)
        out.append(np.asarray(fwd(variables, a, b))[: e - s])
    return np.concatenate(out).astype(np.uint8)


def overlay(test: dict, pred: np.ndarray, info, path: str, n: int = 4) -> str:
    """Rows of (A, B, ground truth, prediction, error map) for the first ``n`` test pairs,
    preferring pairs with change in the ground truth."""
    order = np.argsort(-(test["change"] == 1).reshape(len(pred), -1).mean(1), kind="stable")[:n]
    idx = common.rgb_indices(info.bands)
    rows = []
    for i in order:
        w = test["a"].shape[2]  # stretch A and B together so colours compare across dates
        ab = plots.display_rgb(np.concatenate([test["a"][i], test["b"][i]], axis=1), idx)
        a, b = ab[:, :w], ab[:, w:]
        t = (test["change"][i] == 1).astype(np.float32)
        rows.append([a, b, t, pred[i].astype(np.float32), plots.change_overlay(a, b, t, pred[i])])
    return plots.image_grid(rows, ["image A", "image B", "ground truth", "prediction", "errors on B"], path,
                            legend={"hit": (1, 1, 1), "false alarm": (1, 0.15, 0.15), "miss": (0.2, 0.5, 1)})


def run(config, workdir: str) -> dict:
    info = common.dataset_info(config)
    return common.run_job(config, workdir, load_data,
                          lambda wd, data, loaded: evaluate_arrays(config, wd, *data, info=info, loaded=loaded))
