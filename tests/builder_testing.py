"""A TensorFlow-free ``tfds.testing.DatasetBuilderTestCase`` for rsjax's builders.

TFDS's own ``DatasetBuilderTestCase`` (tensorflow-datasets 4.9.10) derives from
``tf.test.TestCase`` and reads the built dataset with ``tf.data``; rsjax runs without
TensorFlow, so this is the same idea on pytest and ``tfds.data_source``. A test module
subclasses :class:`DatasetBuilderTestCase` once per builder (``tests/test_builder_<name>.py``)
and sets:

* ``DATASET_NAME``: the package under ``tfds_builders/``;
* ``SPLITS``: ``{config: {split: number of examples}}`` expected from the dummy data (``None``
  is the builder's default config) -- the configs to test are its keys;
* ``make_dummy_data(root, config)``: writes a tiny, seeded copy of the dataset's original
  file layout into ``root`` (generated at test time by ``tests/dummy_data.py``, never
  committed) and returns whatever the subclass needs to check contents;
* optionally ``check_examples(config, examples, truth, info)``: content checks beyond the
  specs (``examples`` = ``{split: [decoded example, ...]}``, ``info`` the built DatasetInfo).

What every builder gets (as TFDS's base class does): the class is registered and is a
``GeneratorBasedBuilder`` with release notes; its info has a description and features; every
config builds from the dummy data into exactly ``SPLITS`` (info and the readable data source
agree); every example matches the feature spec (shape, dtype, class-label range); keys are not
local paths. Beyond TFDS: builders of real data refuse an empty or junk ``--manual_dir``, and
neither that nor a failure in the middle of writing leaves anything in ``data_dir``
(issue 14, fault 4).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Optional

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rsjax.data import build, registry


def tree(root) -> dict[str, Optional[bytes]]:
    """Every path below ``root`` -> file contents (None for folders); ``{}`` when absent."""
    root = pathlib.Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def build_quietly(name, data_dir, manual_dir, config=None, **kw) -> str:
    return build.build_dataset(
        name, str(data_dir), None if manual_dir is None else str(manual_dir), config, progress=False, **kw
    )


def read_all(name, data_dir, config=None) -> dict[str, list[dict]]:
    """``{split: [example, ...]}`` of a built dataset, decoded by ``tfds.data_source``."""
    b = build.get_builder(name, str(data_dir), config)
    out = {}
    for split in b.info.splits:
        src = b.as_data_source(split=split)
        out[split] = [src[i] for i in range(len(src))]
    return out


def as_str(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def check_feature(key: str, feature, value) -> None:
    """``value`` (as ``tfds.data_source`` decodes it) matches ``feature``'s spec."""
    if isinstance(feature, tfds.features.ClassLabel):
        assert 0 <= int(value) < feature.num_classes, (key, value)
    elif isinstance(feature, tfds.features.Text):
        assert isinstance(value, (bytes, str)), (key, type(value))
    elif feature.shape == () and isinstance(value, (int, float)):
        # data_source hands scalars back as python numbers: the value must fit the dtype
        dtype = np.dtype(feature.np_dtype)
        assert np.asarray(value).astype(dtype) == value, (key, value, dtype)
    else:
        arr = np.asarray(value)
        assert arr.dtype == np.dtype(feature.np_dtype), (key, arr.dtype, feature.np_dtype)
        shape = feature.shape
        assert arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape)), (
            key,
            arr.shape,
            shape,
        )


def _recording(builder_cls, keys: list):
    """``builder_cls._generate_examples`` that also appends every example key to ``keys``."""
    original = builder_cls._generate_examples

    def generate(builder, *args, **kwargs):
        for key, example in original(builder, *args, **kwargs):
            keys.append(key)
            yield key, example

    return generate


class DatasetBuilderTestCase:
    """Base class; see the module docstring. Subclasses are collected by pytest."""

    DATASET_NAME: str = ""
    SPLITS: dict[Optional[str], dict[str, int]] = {}
    # Builders that read no --manual_dir (rs_synthetic) set this and drop the bad-manual-dir
    # test (``test_bad_manual_dir_is_refused_and_leaves_nothing = None``).
    SKIP_MANUAL_DIR_TESTS = False

    def make_dummy_data(self, root: pathlib.Path, config: Optional[str]) -> Any:
        raise NotImplementedError

    def check_examples(self, config: Optional[str], examples: dict, truth: Any, info: tfds.core.DatasetInfo) -> None:
        """Content checks of one built config (optional)."""

    # ----------------------------------------------------------------------- fixtures

    @pytest.fixture(scope="class")
    @classmethod
    def built(cls, tmp_path_factory):
        """Every config in SPLITS built once from its dummy data:
        ``{config: (data_dir, {split: examples}, truth, manual_dir)}``."""
        self = cls()
        builder_cls = build.get_builder_class(self.DATASET_NAME)
        out = {}
        for config in self.SPLITS:
            base = tmp_path_factory.mktemp(f"{self.DATASET_NAME}_{config or 'default'}")
            manual = base / "manual"
            manual.mkdir()
            truth = self.make_dummy_data(manual, config)
            data_dir = base / "tfds"
            keys = []
            with pytest.MonkeyPatch.context() as mp:  # record the example keys, as TFDS does
                mp.setattr(builder_cls, "_generate_examples", _recording(builder_cls, keys))
                build_quietly(self.DATASET_NAME, data_dir, None if self.SKIP_MANUAL_DIR_TESTS else manual, config)
            # TFDS's `_test_key_not_local_path`: keys must not depend on where the files lie
            assert keys and not any(str(base) in str(k) for k in keys), keys[:3]
            out[config] = (str(data_dir), read_all(self.DATASET_NAME, data_dir, config), truth, manual)
        return out

    # ------------------------------------------------------------------------- tests

    def test_registered_and_baseclass(self, tmp_path):
        cls = build.get_builder_class(self.DATASET_NAME)
        assert self.DATASET_NAME in build.available_builders()
        assert cls.name == self.DATASET_NAME
        assert issubclass(cls, tfds.core.GeneratorBasedBuilder)
        assert str(cls.VERSION) in cls.RELEASE_NOTES
        if not self.SKIP_MANUAL_DIR_TESTS:
            assert cls.MANUAL_DOWNLOAD_INSTRUCTIONS
            assert cls(skip_bad=True, data_dir=str(tmp_path)).skip_bad

    def test_info_and_default_config(self, tmp_path):
        cls = build.get_builder_class(self.DATASET_NAME)
        if cls.BUILDER_CONFIGS:
            names = [c.name for c in cls.BUILDER_CONFIGS]
            assert cls.DEFAULT_CONFIG_NAME in names
            assert cls(data_dir=str(tmp_path)).builder_config.name == cls.DEFAULT_CONFIG_NAME
        for c in cls.BUILDER_CONFIGS or [None]:
            b = cls(config=c and c.name, data_dir=str(tmp_path))
            assert b.info.description and b.info.features
            assert b.info.file_format.value == "array_record"
            if c is not None:
                assert c.description
            # band metadata is data from the registry, one entry per stored band
            reg = registry.get_config_info(self.DATASET_NAME, c and c.name)
            md = b.info.metadata
            assert list(md["bands"]) == list(reg.bands)
            assert len(md["mean"]) == len(md["std"]) == len(md["gsd_m"]) == len(reg.bands)
            image = b.info.features["image" if "image" in b.info.features else "image_a"]
            assert image.shape[-1] == len(reg.bands)

    def test_download_and_prepare_as_dataset(self, built):
        cls = build.get_builder_class(self.DATASET_NAME)
        for config, want in self.SPLITS.items():
            data_dir, examples, truth, _ = built[config]
            b = build.get_builder(self.DATASET_NAME, data_dir, config)
            assert build.is_built(b)
            assert {s: b.info.splits[s].num_examples for s in b.info.splits} == want, config
            assert {s: len(v) for s, v in examples.items()} == want, config
            features = b.info.features
            for split, exs in examples.items():
                for ex in exs:
                    assert set(ex) == set(features.keys()), (config, split)
                    for k, f in features.items():
                        check_feature(k, f, ex[k])
            # nothing but the finished version folder (no incomplete.*, no lock file)
            assert [p for p in os.listdir(data_dir) if p != self.DATASET_NAME] == []
            config_dir = os.path.dirname(b.data_dir)
            assert os.listdir(config_dir) == [str(cls.VERSION)]
            self.check_examples(config, examples, truth, b.info)

    def test_bad_manual_dir_is_refused_and_leaves_nothing(self, tmp_path):
        """A missing, an empty (refused before any builder code runs, so one config suffices)
        and a junk ``--manual_dir`` (every config: each has its own layout search) give an
        error naming the folder, and ``data_dir`` is not even created."""
        junk = tmp_path / "junk"
        (junk / "sub").mkdir(parents=True)
        (junk / "readme.txt").write_text("not a dataset")
        (junk / "sub" / "x.jpg").write_bytes(b"not a jpeg")
        (junk / "sub" / "x.tif").write_bytes(b"not a tiff")
        (tmp_path / "empty").mkdir()
        first = next(iter(self.SPLITS))
        cases = [(tmp_path / "missing", first), (tmp_path / "empty", first)]
        cases += [(junk, config) for config in self.SPLITS]
        data_dir = tmp_path / "tfds"
        for manual, config in cases:
            with pytest.raises(FileNotFoundError, match=str(manual)):
                build_quietly(self.DATASET_NAME, data_dir, manual, config)
            assert not data_dir.exists(), (manual, config, tree(data_dir))

    def test_failure_while_writing_leaves_data_dir_as_it_was(self, built, tmp_path, monkeypatch):
        """A build that fails after writing some examples (here: the disk after the first
        example of a split) leaves ``data_dir`` byte-identical, whatever it held before."""
        config = next(iter(self.SPLITS))
        manual = built[config][3]
        data_dir = tmp_path / "tfds"
        (data_dir / self.DATASET_NAME).mkdir(parents=True)
        (data_dir / "keep.txt").write_text("a user's file")
        (data_dir / self.DATASET_NAME / "notes.txt").write_text("kept")
        before = tree(data_dir)
        cls = build.get_builder_class(self.DATASET_NAME)
        original = cls._generate_examples

        def fail_after_one(builder, *args, **kwargs):
            it = original(builder, *args, **kwargs)
            yield next(it)
            raise OSError("No space left on device (injected by the test)")

        monkeypatch.setattr(cls, "_generate_examples", fail_after_one)
        with pytest.raises(OSError, match="injected by the test"):
            build_quietly(self.DATASET_NAME, data_dir, None if self.SKIP_MANUAL_DIR_TESTS else manual, config)
        assert tree(data_dir) == before
