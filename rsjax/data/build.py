"""Build rsjax's TFDS datasets (array_record, no TensorFlow needed).

Usage::

    python -m rsjax.data.build NAME --manual_dir=DIR --data_dir=OUT [--config=CONFIG] [--skip_bad]

``NAME`` is a folder under ``tfds_builders/`` (``rs_synthetic``, ``eurosat_rgb``, ...). The
builder class is the ``Builder`` exported by the package ``tfds_builders.<NAME>``. Builders of
real datasets read the original files from ``--manual_dir`` (nothing is downloaded);
``rs_synthetic`` ignores it.

Atomicity: TFDS writes every split into ``<data_dir>/<name>/<config>/incomplete.XXXXXX_<ver>``
and renames that folder to ``<ver>`` only after all splits and ``dataset_info.json`` are
written (``tfds.core.utils.incomplete_dir``); a failed or killed build leaves no half dataset
under the final name, and an existing dataset is never overwritten. A file lock serializes
concurrent builds of the same dataset, all configs (several processes of one multi-process run
calling :func:`ensure_built` at once).

A failed build leaves nothing behind: whatever the build created under ``<data_dir>/<name>/``
(TFDS's ``.config/``, the empty ``<config>/`` folder, an ``incomplete.*`` folder), the lock
file and ``data_dir`` itself when the build created it are removed, so after any exception
(a bad input file, an empty or junk ``--manual_dir``, Ctrl-C) ``data_dir`` holds exactly what it
held before. Files that were there before are kept (TFDS may rewrite ``.config/metadata.json``
with the same default config name). A build killed outright (SIGKILL) cannot clean up; its
``incomplete.*`` folder is removed by the next build of that dataset and config.

``--skip_bad``: builders that can meet unreadable input files read ``self.skip_bad`` (or accept a
``skip_bad`` constructor argument); when set they log and skip a bad file instead of stopping
with an error naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import inspect
import logging
import os
import pathlib
import re
import shutil
import tempfile
import time
from typing import Optional

import tensorflow_datasets as tfds
from absl import flags
from tensorflow_datasets.core import file_adapters

from rsjax.errors import ConfigError, DataError, MissingDataError, RsjaxError

log = logging.getLogger(__name__)

# Datasets that need no --manual_dir and can be built on first use.
SELF_CONTAINED = ("rs_synthetic",)

_BUILDERS_PACKAGE = "tfds_builders"


def default_data_dir() -> str:
    """``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets`` (TFDS's own default)."""
    return os.path.expanduser(tfds.core.constants.DATA_DIR)


def available_builders() -> tuple[str, ...]:
    """Names of the builder packages under ``tfds_builders/``."""
    pkg = importlib.import_module(_BUILDERS_PACKAGE)
    root = pathlib.Path(pkg.__file__).parent
    return tuple(
        sorted(
            p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists() and not p.name.startswith("_")
        )
    )


def get_builder_class(name: str) -> type:
    """Imports ``tfds_builders.<name>`` and returns its ``Builder`` class.

    Raises:
      ConfigError: no such builder package; the message lists the available ones.
    """
    base = name.split("/")[0].split(":")[0]
    if not re.fullmatch(r"[a-z][a-z0-9_]*", base):
        raise ConfigError(f"invalid dataset name {name!r}; available: {', '.join(available_builders())}")
    try:
        mod = importlib.import_module(f"{_BUILDERS_PACKAGE}.{base}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(f"{_BUILDERS_PACKAGE}.{base}"):
            raise ConfigError(
                f"no TFDS builder for dataset {base!r} (expected package "
                f"{_BUILDERS_PACKAGE}/{base}/); available: {', '.join(available_builders())}"
            ) from None
        raise
    cls = getattr(mod, "Builder", None)
    if cls is None:
        candidates = [
            v
            for v in vars(mod).values()
            if inspect.isclass(v) and issubclass(v, tfds.core.DatasetBuilder) and getattr(v, "name", None) == base
        ]
        if not candidates:
            raise ValueError(f"package {mod.__name__} defines no `Builder` class")
        cls = candidates[0]
    return cls


def get_builder(
    name: str, data_dir: Optional[str] = None, config: Optional[str] = None, **kwargs
) -> tfds.core.DatasetBuilder:
    """Instantiates the builder of ``name`` (with ``config`` or its default) on ``data_dir``.

    Falls back to ``tfds.builder`` (read-only from ``data_dir``, or a TFDS catalog dataset) when
    ``tfds_builders/<name>`` does not exist.
    """
    data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    try:
        cls = get_builder_class(name)
    except ValueError:
        full = name if config is None else f"{name}/{config}"
        try:
            return tfds.builder(full, data_dir=data_dir)
        except Exception:  # noqa: BLE001 - re-raise our clearer error below
            pass
        raise
    if config is not None and cls.BUILDER_CONFIGS:
        known = [c.name for c in cls.BUILDER_CONFIGS]
        if config not in known:
            raise ConfigError(
                f"dataset {name!r} has no builder config {config!r} (config key "
                f"data.builder_config); known configs: {', '.join(known)}"
            )
    builder = cls(config=config, data_dir=data_dir, **kwargs)
    check_random_access(builder)
    return builder


def check_random_access(builder: tfds.core.DatasetBuilder) -> None:
    """Refuses, in one line, a dataset prepared only in a format rsjax cannot read.

    rsjax reads by random access (``tfds.data_source``: array_record or parquet). ``tfds build``
    writes TFRecord unless told ``--file_format=array_record`` (rsjax's own builders default to
    array_record; a dataset built before that, or by another builder, may still be TFRecord).

    Raises:
      DataError: the dataset is built and none of its file formats allows random access.
    """
    if not is_built(builder):
        return
    formats = set(builder.info.available_file_formats())
    if formats and not formats & set(file_adapters.FileFormat.with_random_access()):
        name = builder.info.full_name.split("/")[0]
        written = ", ".join(sorted(f.value for f in formats))
        raise DataError(
            f"dataset {builder.info.full_name} at {builder.data_dir} is stored as {written}, which rsjax "
            f"cannot read (it needs random access); rebuild it as array_record into a new --data_dir or "
            f"after deleting that folder: tfds build tfds_builders/{name} --file_format=array_record "
            f"--manual_dir=DIR, or python -m rsjax.data.build {name} --manual_dir=DIR"
        )


def is_built(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether ``builder``'s dataset (this config and version) is completely written.

    Checks for ``dataset_info.json`` first: TFDS's ``is_prepared`` logs a misleading warning
    for a folder that does not exist yet."""
    return (builder.data_path / "dataset_info.json").exists() and builder.is_prepared()


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str):
    """Exclusive lock of dataset ``name`` (all its configs: they share ``<data_dir>/<name>/``,
    which a failed build cleans up) in ``data_dir``, as a lock file that is deleted on release
    (so that ``data_dir`` keeps no trace of it).

    Deleting a lock file is safe with the usual check: a process that waited for the lock
    re-opens the file when the path no longer names the file it locked (someone released and
    deleted it in the meantime), so two processes never hold locks on two different files.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, f".rsjax_build_{name}.lock")
    while True:
        f = open(path, "a")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:  # released and deleted while we waited: try again
            pass
        f.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _tree(root: str) -> set[str]:
    """Paths (relative to ``root``) of every file and folder below ``root``; empty when absent."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out.update(os.path.normpath(os.path.join(rel, n)) for n in dirnames + filenames)
    return out


@contextlib.contextmanager
def _leave_no_trace(dataset_root: str):
    """On any exception, deletes what appeared under ``dataset_root`` (``<data_dir>/<name>``)
    since entering, and ``dataset_root`` itself when it did not exist; then re-raises.

    Run inside the build lock: no other process of this machine builds any config of the same
    dataset meanwhile, so everything new below ``dataset_root`` is this build's.
    """
    existed = os.path.isdir(dataset_root)
    before = _tree(dataset_root)
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(dataset_root, ignore_errors=True)
        else:
            # Deepest first: files, then the folders they emptied.
            for rel in sorted(_tree(dataset_root) - before, key=lambda r: r.count(os.sep), reverse=True):
                p = os.path.join(dataset_root, rel)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
            if before:
                log.info("removed what the failed build wrote under %s", dataset_root)
        raise


def _remove_stale_incomplete(config_dir: str) -> None:
    """Deletes ``incomplete.*`` folders a killed build left in ``<data_dir>/<name>/<config>``
    (called under the build lock: none of them can belong to a build still running here)."""
    if not os.path.isdir(config_dir):
        return
    for entry in os.listdir(config_dir):
        if entry.startswith(tfds.core.constants.INCOMPLETE_PREFIX):
            log.warning("removing %s, left by an interrupted build", os.path.join(config_dir, entry))
            shutil.rmtree(os.path.join(config_dir, entry), ignore_errors=True)


def build_dataset(
    name: str,
    data_dir: Optional[str] = None,
    manual_dir: Optional[str] = None,
    config: Optional[str] = None,
    *,
    skip_bad: bool = False,
    progress: bool = True,
) -> str:
    """Builds ``name`` (array_record) into ``data_dir`` and returns the dataset version folder.

    Reuses an existing build. ``manual_dir`` holds the original files for real datasets and is
    ignored by ``rs_synthetic``.
    """
    data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    if manual_dir is not None:
        manual_dir = os.path.expanduser(manual_dir)
        if not os.path.isdir(manual_dir) and name not in SELF_CONTAINED:
            raise MissingDataError(f"--manual_dir {manual_dir!r} is not a directory")
    kwargs = {}
    cls = get_builder_class(name)
    if skip_bad and "skip_bad" in inspect.signature(cls.__init__).parameters:
        kwargs["skip_bad"] = True
    created_data_dir = not os.path.exists(data_dir)
    try:
        with _build_lock(data_dir, cls.name), _leave_no_trace(os.path.join(data_dir, cls.name)):
            builder = get_builder(name, data_dir, config, **kwargs)
            if skip_bad:
                builder.skip_bad = True
            if is_built(builder):
                log.info("dataset %s already built at %s", builder.info.full_name, builder.data_dir)
                return builder.data_dir
            if progress:
                tfds.enable_progress_bar()
            else:
                tfds.disable_progress_bar()
            t0 = time.perf_counter()
            _remove_stale_incomplete(os.path.dirname(os.fspath(builder.data_path)))
            # Nothing is downloaded; a throw-away download dir keeps data_dir free of
            # `downloads/`.
            with tempfile.TemporaryDirectory(prefix="rsjax_dl_") as dl_dir, _data_errors(name):
                download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
                builder.download_and_prepare(
                    download_dir=dl_dir, download_config=download_config, file_format="array_record"
                )
    except BaseException:
        if created_data_dir:  # only the (already deleted) lock file was ever in it
            with contextlib.suppress(OSError):
                os.rmdir(data_dir)
        raise
    log.info("built %s in %.1f s at %s", builder.info.full_name, time.perf_counter() - t0, builder.data_dir)
    skipped = getattr(builder, "skipped_files", None)
    if skipped:  # builders of real data with --skip_bad (tfds_builders/_common.py)
        log.warning(
            "%s: skipped %d bad input file(s) (listed in the dataset metadata `skipped_files`): %s",
            builder.info.full_name,
            len(skipped),
            ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""),
        )
    return builder.data_dir


def ensure_built(name: str, data_dir: Optional[str] = None, config: Optional[str] = None) -> str:
    """Returns the folder of a built dataset, building self-contained ones on first use.

    ``rs_synthetic`` (the embedded default) is generated into ``data_dir`` when missing; any
    other dataset must have been built with ``python -m rsjax.data.build NAME --manual_dir=...``
    and a missing build raises FileNotFoundError saying so.
    """
    data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    builder = get_builder(name, data_dir, config)
    if is_built(builder):
        return builder.data_dir
    base = name.split("/")[0]
    if base in SELF_CONTAINED:
        return build_dataset(base, data_dir, config=config, progress=False)
    raise MissingDataError(
        f"dataset {name!r} (config {config!r}) is not built in {data_dir!r} (config key "
        f"data.data_dir). Build it from the original files with: python -m rsjax.data.build "
        f"{base} --manual_dir=DIR --data_dir={data_dir}" + (f" --config={config}" if config else "")
    )


@contextlib.contextmanager
def _data_errors(name: str):
    """A builder's complaint about its input files (tfds_builders' ``BadFileError`` naming the
    file; a FileNotFoundError of a missing file) as :class:`rsjax.errors.DataError`, which the
    CLI prints in one line. TFDS may wrap it: the innermost such error is reported. A split left
    without examples (every input file of it bad and skipped with ``--skip_bad``) is reported as
    such instead of TFDS's bare "No examples were yielded"."""
    try:
        yield
    except RsjaxError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a data problem
        if isinstance(e, AssertionError) and "No examples were yielded" in str(e):
            raise DataError(
                f"building {name}: {e} (no readable input for it: with --skip_bad, "
                "every file of that split was skipped; see the warnings above)"
            ) from e
        inner = e
        while inner is not None:
            if isinstance(inner, (FileNotFoundError, NotADirectoryError)):  # stays a FileNotFoundError
                raise MissingDataError(f"building {name}: {inner}") from e
            if type(inner).__name__ == "BadFileError":
                raise DataError(f"building {name}: {inner}") from e
            inner = inner.__cause__ or inner.__context__
        raise


def main(argv):
    from absl import flags  # imported here so library users do not define flags

    flags_ = flags.FLAGS
    if len(argv) != 2:
        raise ConfigError(
            "usage: python -m rsjax.data.build NAME --manual_dir=DIR --data_dir=OUT "
            f"[--config=CONFIG] [--skip_bad]; available NAMEs: {', '.join(available_builders())}"
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    path = build_dataset(argv[1], flags_.data_dir, flags_.manual_dir, flags_.config, skip_bad=flags_.skip_bad)
    print(f"{argv[1]}: ready after {time.perf_counter() - t0:.1f} s -> {path}")


def _define_flags():
    flags.DEFINE_string("manual_dir", None, "Folder with the original dataset files.")
    flags.DEFINE_string(
        "data_dir", None, "TFDS data dir to write to (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)."
    )
    flags.DEFINE_string("config", None, "Builder config name (default: the builder's default).")
    flags.DEFINE_bool("skip_bad", False, "Skip unreadable input files instead of failing.")


if __name__ == "__main__":
    from rsjax.errors import run_cli

    _define_flags()
    run_cli(main, "rsjax.data.build")
