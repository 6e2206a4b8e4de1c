"""EuroSAT (RGB and MS) shared code: file discovery and the stratified train/test split.

Split rule (documented contract, re-implemented independently in tests/test_builders.py):

* The classes are taken in sorted order (``rsjax.data.registry.EUROSAT_CLASSES`` is sorted).
* The files of one class are sorted by name (python ``sorted`` of the file names, so
  ``Forest_10.jpg`` comes before ``Forest_2.jpg``); their positions ``0 .. n-1`` in that
  order are the class's indices.
* ONE generator ``rng = numpy.random.default_rng(split_seed)`` (``split_seed = 0``) is shared
  by all classes, in class order: ``perm = rng.permutation(n)`` for each class; the first
  ``round(test_fraction * n)`` entries of ``perm`` (python ``round``, ``test_fraction = 0.2``)
  are that class's ``test`` images and the rest are ``train``.
  On the full dataset this gives test 5,400 / train 21,600.
* Optional ``validation`` (builder config ``with_validation``): a second shared generator
  ``numpy.random.default_rng(validation_seed)`` (``validation_seed = 1``), in class order:
  ``perm = rng.permutation(train_indices)`` (that class's train indices in ascending order) and
  the first ``round(validation_fraction * n)`` (``validation_fraction = 0.1`` of the *whole*
  class) move from ``train`` to ``validation``: 2,700 validation / 18,900 train, with the
  same ``test`` split as the default config.

``scene_id`` of an image is its global index in (class order, file-name order), so every image
is its own scene and ids are stable across configs and unaffected by skipped files.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from rsjax.data import folders, registry
from tfds_builders import _common

log = logging.getLogger(__name__)


def find_class_root(manual_dir: pathlib.Path, classes: Sequence[str], ext: str) -> pathlib.Path:
    """Folder under ``manual_dir`` (itself or a subfolder such as ``2750/`` or
    ``EuroSAT_RGB/``, up to 6 levels deep) that holds one sub-folder per class.

    Raises:
      FileNotFoundError: no such folder; the message names the expected layout.
    """

    def has_classes(d: pathlib.Path) -> bool:
        return all((d / c).is_dir() for c in classes)

    root = _common.find_dir(manual_dir, has_classes, max_depth=6)
    if root is None:
        missing = [c for c in classes if not (manual_dir / c).is_dir()]
        raise FileNotFoundError(
            f"{manual_dir}: expected the EuroSAT layout <Class>/<Class>_<n>{ext} with one "
            f"folder per class {list(classes)}; missing class folders: {missing}"
        )
    return root


def list_class_files(
    root: pathlib.Path, classes: Sequence[str], exts: Sequence[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """``({class: sorted file names}, ignored)``: the files with one of ``exts`` in each class
    folder, and the ``<Class>/<name>`` of every other (non-hidden) file there, which is not read.

    Raises:
      FileNotFoundError: a class folder holds no such file.
    """
    out, ignored = {}, []
    for c in classes:
        names = sorted(p.name for p in _common.list_files(root / c, tuple(exts)))
        if not names:
            raise FileNotFoundError(f"{root / c}: no {'/'.join(exts)} files for EuroSAT class {c!r}")
        out[c] = names
        taken = set(names)
        ignored += [
            f"{c}/{p.name}"
            for p in sorted((root / c).iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name not in taken
        ]
    return out, ignored


# The split rule lives in the library so that the TFDS builder, the folder readers of the
# evaluation jobs and the GPU-resident study split identically.
stratified_split = folders.split_assignments


SPLIT_CODES = {0: "train", 1: "test", 2: "validation"}


# ------------------------------------------------------------------------------ builders


@dataclasses.dataclass
class EuroSATConfig(tfds.core.BuilderConfig):
    """Split parameters (see the module docstring for the exact rule)."""

    test_fraction: float = 0.2
    split_seed: int = 0
    validation_fraction: float = 0.0
    validation_seed: int = 1


CONFIGS = [
    EuroSATConfig(
        name="default",
        description="Stratified split: per class 20% test (seed 0), the rest train "
        "(full dataset: 21,600 train / 5,400 test).",
    ),
    EuroSATConfig(
        name="with_validation",
        description="The default test split; 10% of every class moved from train to "
        "validation with seed 1 (full dataset: 18,900 / 2,700 / 5,400).",
        validation_fraction=0.1,
    ),
]


class EuroSATBuilderBase(_common.ManualDataMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared EuroSAT builder; subclasses set the registry name, file extension and reader."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = CONFIGS
    DEFAULT_CONFIG_NAME = "default"

    REGISTRY_NAME: str = ""
    EXTENSIONS: tuple = ()  # file types read from the class folders; the first names the layout
    DTYPE = np.uint8
    DESCRIPTION: str = ""
    CITATION = """@article{helber2019eurosat,
  title={EuroSAT: A Novel Dataset and Deep Learning Benchmark for Land Use and Land Cover
         Classification},
  author={Helber, Patrick and Bischke, Benjamin and Dengel, Andreas and Borth, Damian},
  journal={IEEE Journal of Selected Topics in Applied Earth Observations and Remote Sensing},
  volume={12}, number={7}, pages={2217--2226}, year={2019}}"""

    @property
    def dataset_info(self) -> registry.DatasetInfo:
        return registry.get_config_info(self.REGISTRY_NAME)

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass --manual_dir=DIR where DIR (or a sub-folder of it, e.g. `2750/`) holds one "
        "folder per class: <Class>/<Class>_<n>.jpg (RGB) or .tif (MS)."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        info, cfg = self.dataset_info, self.builder_config
        s, c = info.image_size, info.num_bands
        metadata = tfds.core.MetadataDict(
            **info.as_metadata(),
            **_common.skip_metadata(),
            split_rule=(
                "per class (sorted), files sorted by name; one shared "
                f"numpy.random.default_rng({cfg.split_seed}); perm = rng.permutation(n); first "
                f"round({cfg.test_fraction} * n) -> test, rest -> train"
                + (
                    f"; validation: shared default_rng({cfg.validation_seed}), "
                    f"rng.permutation(train indices), first round({cfg.validation_fraction} * n) "
                    "-> validation"
                    if cfg.validation_fraction > 0
                    else ""
                )
            ),
            test_fraction=cfg.test_fraction,
            split_seed=cfg.split_seed,
            validation_fraction=cfg.validation_fraction,
            validation_seed=cfg.validation_seed,
        )
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(s, s, c), dtype=self.DTYPE, encoding="bytes"),
                    "label": tfds.features.ClassLabel(names=list(info.class_names)),
                    "scene_id": tfds.features.Scalar(dtype=np.int32),
                    "filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/phelber/EuroSAT",
            citation=self.CITATION,
            metadata=metadata,
        )

    def _split_generators(self, dl_manager):
        info, cfg = self.dataset_info, self.builder_config
        mdir = _common.manual_dir(dl_manager, self.name, f"<Class>/<Class>_<n>{self.EXTENSIONS[0]}")
        root = find_class_root(mdir, info.class_names, self.EXTENSIONS[0])
        files, ignored = list_class_files(root, info.class_names, self.EXTENSIONS)
        md = self.info.metadata
        if md is not None:
            md["num_ignored"], md["ignored_files"] = len(ignored), ignored
        if ignored:  # said, counted and recorded: never a silent drop
            log.warning(
                "%s: %d file(s) in the class folders are not %s images and are not read: %s%s",
                self.name,
                len(ignored),
                "/".join(self.EXTENSIONS),
                ", ".join(ignored[:5]),
                " ..." if len(ignored) > 5 else "",
            )
        assign = stratified_split(
            [len(files[c]) for c in info.class_names],
            test_fraction=cfg.test_fraction,
            split_seed=cfg.split_seed,
            validation_fraction=cfg.validation_fraction,
            validation_seed=cfg.validation_seed,
        )
        items: dict[str, list] = {"train": [], "validation": [], "test": []}
        gidx = 0
        for label, c in enumerate(info.class_names):
            for name, code in zip(files[c], assign[label]):
                items[SPLIT_CODES[int(code)]].append((gidx, label, c, name))
                gidx += 1
        return {split: self._generate_examples(root, split, its) for split, its in items.items() if its}

    def _load(self, path: pathlib.Path) -> np.ndarray:
        raise NotImplementedError

    def _generate_examples(self, root, split, items):
        s = self.dataset_info.image_size

        def one(item):
            gidx, label, cls, name = item
            path = root / cls / name
            img = self._load(path)
            if img.shape[:2] != (s, s):
                raise _common.BadFileError(path, f"expected {s} x {s} pixels, got {img.shape[0]} x {img.shape[1]}")
            rel = f"{cls}/{name}"
            yield rel, {"image": img, "label": label, "scene_id": np.int32(gidx), "filename": rel}

        yield from _common.iter_with_skip(self, items, one, root)
        self._report_skipped(split)
