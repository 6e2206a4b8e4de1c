"""Dataset metadata as data: bands, wavelengths, ground resolution, normalization, classes.

Every number that a pipeline needs to turn stored pixels into network input lives here, never
inline in code (DESIGN.md section 5). Normalization is two steps, per band ``c``::

    x_float = x_raw / scale                  # reflectance in [0, ~1] or 8-bit RGB in [0, 1]
    x_norm  = (x_float - mean[c]) / std[c]   # mean / std are in the *scaled* units

``scale`` is 10000 for Sentinel-2 reflectance (the SSL4EO convention: L1C/L2A digital numbers
are reflectance x 1e4) and 255 for 8-bit RGB. ``bands`` is the storage order of the last axis
in the TFDS builder of that dataset; builders must write bands in exactly this order.
``config.data.normalization="scale:S"`` replaces both steps by ``x_raw / S`` (the input of
weights imported from elsewhere; see :func:`data_info`).

Statistics provenance (all in scaled units, i.e. already divided by ``scale``):

* ``rs_synthetic``: measured on the procedural generator (``rsjax.data.synthetic``), 96 tiles
  of the ``default`` config, seed 0 (``python -c "import rsjax.data.synthetic as s;
  print(s.band_statistics())"``).
* ``eurosat_rgb``: measured on all 27,000 JPEGs of ``shared/data/eurosat_rgb`` (pixels / 255).
* ``eurosat_ms``: the widely used EuroSAT-MS training statistics (as reported by TorchGeo's
  EuroSAT data module) reordered into Sentinel-2 band order; estimates, no MS tifs at hand.
* ``bigearthnet``: the statistics published by the BigEarthNet team (BigEarthNet-S2 v1.0 L2A).
* ``ssl4eo_s12``: the S2 L1C statistics published with SSL4EO-S12 (zhu-xlab).
* ``levir_cd``: measured on the 11 LEVIR-CD sample pairs in ``shared/data/levir_cd_samples``
  (A and B images); a rough estimate from 22 images of 256 x 256.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Sequence

import numpy as np

from rsjax.errors import ConfigError, DataError

# Sentinel-2 MSI band names (storage order of L1C products) and central wavelengths (S2A, nm),
# ground sampling distance in metres of each band's native grid.
S2_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)
S2_WAVELENGTHS_NM: dict[str, float] = {
    "B01": 443.0,
    "B02": 490.0,
    "B03": 560.0,
    "B04": 665.0,
    "B05": 705.0,
    "B06": 740.0,
    "B07": 783.0,
    "B08": 842.0,
    "B8A": 865.0,
    "B09": 945.0,
    "B10": 1375.0,
    "B11": 1610.0,
    "B12": 2190.0,
}
S2_GSD_M: dict[str, float] = {
    "B01": 60.0,
    "B02": 10.0,
    "B03": 10.0,
    "B04": 10.0,
    "B05": 20.0,
    "B06": 20.0,
    "B07": 20.0,
    "B08": 10.0,
    "B8A": 20.0,
    "B09": 60.0,
    "B10": 60.0,
    "B11": 20.0,
    "B12": 20.0,
}
# Nominal centre wavelengths used for 8-bit RGB products (R, G, B).
RGB_WAVELENGTHS_NM: tuple[float, float, float] = (665.0, 560.0, 490.0)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of one dataset, as stored by its TFDS builder.

    Attributes:
      name: registry / TFDS builder name.
      bands: band names in storage order (last image axis).
      wavelengths_nm: centre wavelength of each band, same order as ``bands``.
      gsd_m: ground sampling distance of each band as stored (after any resampling the
        builder does, e.g. BigEarthNet 20/60 m bands are upsampled to the 10 m grid).
      mean, std: per-band statistics of ``x_raw / scale``.
      scale: divide raw pixel values by this first (10000 for S2 reflectance, 255 for 8 bit).
      num_classes: number of classes of the dataset's label (0 when unlabelled).
      class_names: names of the classes, ``len == num_classes``.
      image_size: height (= width) in pixels of one stored example.
      multi_label: True when ``label`` is a multi-hot vector (BigEarthNet).
      task: 'classification' | 'multilabel' | 'change_detection' | 'pretraining'.
      mask_ignore_value: how the dataset's STORED dense masks (segmentation masks, change maps)
        mark pixels that count nowhere -- THE mask convention of rsjax
        (:func:`rsjax.data.segmentation.masks_to_labels` turns it into the in-memory ignore
        label -1, the one every dense job and loss uses): ``None`` = every stored value is a
        class id; ``0`` = mmsegmentation's ``reduce_zero_label`` (stored 0 and 255 are ignored,
        ``v`` in 1..254 is class ``v - 1``); another value ``u`` = stored ``u`` is ignored, the
        rest are class ids as stored.
      mask_colours: for datasets whose original masks are colour-coded and read from their folder
        (``config.data.folder``; :func:`rsjax.data.tiles.read`): ``(name, "#RRGGBB")``
        pairs, THE colour table. A name among ``class_names`` is that class; any other name
        (``unlabeled``, ``no_data``) marks pixels to ignore. Only exact colours are read: a colour
        not in the table is an error naming the file. Needs ``mask_ignore_value=0`` (the colours
        become stored masks of that convention). ``()`` = index masks (every TFDS builder).
    """

    name: str
    bands: tuple[str, ...]
    wavelengths_nm: tuple[float, ...]
    gsd_m: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int
    multi_label: bool = False
    task: str = "classification"
    mask_ignore_value: int | None = None
    mask_colours: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        n = len(self.bands)
        for field in ("wavelengths_nm", "gsd_m", "mean", "std"):
            if len(getattr(self, field)) != n:
                raise ValueError(
                    f"DatasetInfo({self.name!r}).{field} has {len(getattr(self, field))} "
                    f"entries but there are {n} bands {self.bands}"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"DatasetInfo({self.name!r}).std must be positive: {self.std}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"DatasetInfo({self.name!r}) has num_classes={self.num_classes} but {len(self.class_names)} class_names"
            )
        if self.mask_colours:
            hexes = [c.upper() for _, c in self.mask_colours]
            if (
                self.mask_ignore_value != 0
                or not all(re.fullmatch(r"#[0-9A-F]{6}", c) for c in hexes)
                or len(set(hexes)) != len(hexes)
                or not set(self.class_names) <= {n for n, _ in self.mask_colours}
            ):
                raise ValueError(
                    f"DatasetInfo({self.name!r}).mask_colours {self.mask_colours}: needs distinct "
                    f"#RRGGBB colours, one for each class {self.class_names}, and mask_ignore_value=0"
                )

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    def band_index(self, band: str) -> int:
        """Index of ``band`` in storage order; ValueError naming the known bands otherwise."""
        try:
            return self.bands.index(band)
        except ValueError:
            raise ValueError(f"dataset {self.name!r} has no band {band!r}; its bands are {self.bands}") from None

    def as_metadata(self) -> dict:
        """JSON-serializable dict (for tfds.core.MetadataDict / config dumps)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _s2(bands: Sequence[str]):
    return (
        tuple(bands),
        tuple(S2_WAVELENGTHS_NM[b] for b in bands),
        tuple(S2_GSD_M[b] for b in bands),
    )


# Land-cover classes of the procedural generator (rsjax.data.synthetic); order = class id.
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "water",
    "forest",
    "cropland",
    "grassland",
    "urban",
    "bare_soil",
)

EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)

# BigEarthNet 19-class nomenclature (Sumbul et al. 2020, "BigEarthNet-MM"), alphabetical order
# as used by most loaders.
BIGEARTHNET19_CLASSES: tuple[str, ...] = (
    "Agro-forestry areas",
    "Arable land",
    "Beaches, dunes, sands",
    "Broad-leaved forest",
    "Coastal wetlands",
    "Complex cultivation patterns",
    "Coniferous forest",
    "Industrial or commercial units",
    "Inland waters",
    "Inland wetlands",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Marine waters",
    "Mixed forest",
    "Moors, heathland and sclerophyllous vegetation",
    "Natural grassland and sparsely vegetated areas",
    "Pastures",
    "Permanent crops",
    "Transitional woodland, shrub",
    "Urban fabric",
)

_BEN_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")

_REGISTRY: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo, *, overwrite: bool = False) -> DatasetInfo:
    """Adds ``info`` to the registry (used by builders of new datasets and by tests)."""
    if info.name in _REGISTRY and not overwrite:
        raise ValueError(f"dataset {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


register(
    DatasetInfo(
        "rs_synthetic",
        *_s2(S2_BANDS),
        mean=(0.1113, 0.1076, 0.1182, 0.1108, 0.1455, 0.2062, 0.2340, 0.2451, 0.2522, 0.0804, 0.0070, 0.2131, 0.1516),
        std=(0.0537, 0.0470, 0.0419, 0.0608, 0.0650, 0.0904, 0.1101, 0.1177, 0.1220, 0.0380, 0.0081, 0.1099, 0.0934),
        scale=10000.0,
        num_classes=len(SYNTHETIC_CLASSES),
        class_names=SYNTHETIC_CLASSES,
        image_size=32,
    )
)

register(
    DatasetInfo(
        "eurosat_rgb",
        bands=("R", "G", "B"),
        wavelengths_nm=RGB_WAVELENGTHS_NM,
        gsd_m=(10.0, 10.0, 10.0),
        mean=(0.34438, 0.38029, 0.40777),
        std=(0.20266, 0.13690, 0.11555),
        scale=255.0,
        num_classes=10,
        class_names=EUROSAT_CLASSES,
        image_size=64,
    )
)

register(
    DatasetInfo(
        "eurosat_ms",
        *_s2(S2_BANDS),
        mean=(
            0.13544,
            0.11182,
            0.10429,
            0.09476,
            0.11995,
            0.19998,
            0.23692,
            0.22968,
            0.25941,
            0.07321,
            0.00121,
            0.18190,
            0.11189,
        ),
        std=(
            0.02457,
            0.03330,
            0.03951,
            0.05938,
            0.05664,
            0.08612,
            0.10866,
            0.11180,
            0.12316,
            0.04049,
            0.00048,
            0.10026,
            0.07613,
        ),
        scale=10000.0,
        num_classes=10,
        class_names=EUROSAT_CLASSES,
        image_size=64,
    )
)

register(
    DatasetInfo(
        "bigearthnet",
        bands=_BEN_BANDS,
        wavelengths_nm=tuple(S2_WAVELENGTHS_NM[b] for b in _BEN_BANDS),
        # The builder resamples every band onto the 120 x 120 grid of the 10 m bands.
        gsd_m=(10.0,) * len(_BEN_BANDS),
        mean=(
            0.034077,
            0.042994,
            0.061422,
            0.059024,
            0.095068,
            0.179246,
            0.207547,
            0.221895,
            0.226646,
            0.224606,
            0.159443,
            0.100933,
        ),
        std=(
            0.055481,
            0.057242,
            0.058288,
            0.067589,
            0.072990,
            0.109601,
            0.127345,
            0.136546,
            0.135614,
            0.130233,
            0.107919,
            0.081887,
        ),
        scale=10000.0,
        num_classes=len(BIGEARTHNET19_CLASSES),
        class_names=BIGEARTHNET19_CLASSES,
        image_size=120,
        multi_label=True,
        task="multilabel",
    )
)

register(
    DatasetInfo(
        "ssl4eo_s12",
        *_s2(S2_BANDS),
        mean=(
            0.16129,
            0.13976,
            0.13223,
            0.13731,
            0.15610,
            0.21084,
            0.23907,
            0.23187,
            0.25810,
            0.08377,
            0.00220,
            0.21952,
            0.15374,
        ),
        std=(
            0.07910,
            0.08543,
            0.08787,
            0.11449,
            0.11275,
            0.11642,
            0.12760,
            0.12495,
            0.13459,
            0.05775,
            0.00475,
            0.13400,
            0.11429,
        ),
        scale=10000.0,
        num_classes=0,
        class_names=(),
        image_size=264,
        task="pretraining",
    )
)

register(
    DatasetInfo(
        "levir_cd",
        bands=("R", "G", "B"),
        wavelengths_nm=RGB_WAVELENGTHS_NM,
        gsd_m=(0.5, 0.5, 0.5),
        mean=(0.42139, 0.42027, 0.37585),
        std=(0.21720, 0.20907, 0.19826),
        scale=255.0,
        num_classes=2,
        class_names=("no_change", "change"),
        image_size=256,
        task="change_detection",
    )
)


def warn_if_upsampling(image_size: int, stored, *, what: str) -> bool:
    """Warns (``UserWarning``) when ``config.data.image_size`` is larger than the stored images
    ``stored`` (a side in pixels, or ``(H, W)``): resizing them up adds no detail, costs
    compute and is usually a typo. Returns True when it warned."""
    hw = (int(stored), int(stored)) if np.ndim(stored) == 0 else tuple(int(v) for v in stored)[:2]
    if not image_size or int(image_size) <= min(hw):
        return False
    warnings.warn(
        f"config.data.image_size={int(image_size)} is larger than the stored images of {what} "
        f"({hw[0]} x {hw[1]} px): they are upsampled {int(image_size) / min(hw):.3g}x, which adds no "
        f"detail (set config.data.image_size <= {min(hw)} unless this is intended)",
        UserWarning,
        stacklevel=2,
    )
    return True


def known_datasets() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def _base_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` registered as ``name`` (a ``name/config`` suffix ignored);
    ConfigError listing the known names for an unknown one."""
    base = name.split("/")[0].split(":")[0]
    try:
        return _REGISTRY[base]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r} (config key data.name); known datasets: {', '.join(known_datasets())}"
        ) from None


def scale_values(x_raw, scale: float, xp=np):
    """Step 1 of THE normalization: ``x_raw * (1 / scale)`` in float32 (reflectance / [0, 1] RGB).
    ``xp``: ``numpy`` or ``jax.numpy`` (the jax backend of the ops, jitted steps)."""
    return xp.asarray(x_raw).astype(xp.float32) * np.float32(1.0 / scale)


def standardize_values(x_scaled, mean, std, xp=np):
    """Step 2 of THE normalization: ``(x_scaled - mean[c]) * (1 / std[c])`` over the last axis,
    float32. The augmentations run between the two steps (photometric ops act on scaled values)."""
    inv_std = np.float32(1.0) / np.asarray(std, np.float32)
    return (xp.asarray(x_scaled, xp.float32) - np.asarray(mean, np.float32)) * inv_std


def to_scaled(x_raw, info: DatasetInfo, xp=np):
    """:func:`scale_values` with the dataset's ``scale``."""
    return scale_values(x_raw, info.scale, xp)


def standardize(x_scaled, info: DatasetInfo, xp=np):
    """:func:`standardize_values` with the dataset's ``mean`` / ``std``."""
    return standardize_values(x_scaled, info.mean, info.std, xp)


def normalize(x_raw, info: DatasetInfo, xp=np):
    """``(x_raw / info.scale - mean[c]) / std[c]`` over the last axis, as float32: THE formula
    (:func:`to_scaled` then :func:`standardize`; every input path uses these two).

    Args:
      x_raw: array ``[..., C]`` of stored pixel values (uint8 / uint16 / float), ``C`` equal to
        ``info.num_bands``.
      info: the dataset's registry entry.
      xp: ``numpy`` (default) or ``jax.numpy``.

    Returns:
      float32 array of the same shape.
    """
    shape = tuple(getattr(x_raw, "shape", np.shape(x_raw)))
    if not shape or shape[-1] != info.num_bands:
        raise DataError(
            f"dataset {info.name!r} has {info.num_bands} bands {info.bands} but the image has "
            f"shape {shape} (last axis = bands)"
        )
    return standardize(to_scaled(x_raw, info, xp), info, xp)


def denormalize(x: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Inverse of :func:`normalize`, back to *scaled* units (``x_raw / scale``), float32."""
    return np.asarray(x, np.float32) * np.asarray(info.std, np.float32) + np.asarray(info.mean, np.float32)


# ------------------------------------------------------------------------------------------
# Normalization modes (config key ``data.normalization``)
#
# ``"registry"`` (default): the two steps above with the dataset's ``scale`` / ``mean`` / ``std``.
# ``"scale:S"``: ``x_raw / S`` only, no centring or per-band standardization -- the input that
# weights trained elsewhere expect, e.g. torchgeo's SSL4EO-S12 ResNets (``raw / 10000``).
# The mode is expressed as a registry entry with ``scale=S, mean=0, std=1``
# (:func:`with_normalization`), so every consumer of a ``DatasetInfo`` (``normalize``, the host
# pipeline, the in-step device augmentation, ``denormalize``) honours it without a code path
# of its own.
# ------------------------------------------------------------------------------------------

NORMALIZATION_DEFAULT = "registry"


def parse_normalization(mode: str | None) -> tuple[str, float | None]:
    """``"registry"`` -> ``("registry", None)``; ``"scale:10000"`` -> ``("scale", 10000.0)``.

    None / ``""`` mean ``"registry"``. ValueError naming ``data.normalization`` otherwise.
    """
    text = NORMALIZATION_DEFAULT if mode in (None, "") else str(mode).strip()
    if text == "registry":
        return "registry", None
    kind, sep, value = text.partition(":")
    if kind == "scale" and sep:
        try:
            s = float(value)
        except ValueError:
            s = float("nan")
        if np.isfinite(s) and s > 0:
            return "scale", s
    raise ConfigError(
        f"data.normalization={mode!r}: expected 'registry' (per-band standardization with the "
        f"dataset's registry statistics) or 'scale:S' with a number S > 0 (x_raw / S, no "
        f"centring), e.g. 'scale:10000'"
    )


def normalization_name(mode: str | None) -> str:
    """Canonical spelling of a mode (``"scale:1e4"`` -> ``"scale:10000"``), for comparisons."""
    kind, s = parse_normalization(mode)
    return kind if s is None else f"scale:{s:g}"


def with_normalization(info: DatasetInfo, mode: str | None) -> DatasetInfo:
    """``info`` itself for ``"registry"``; for ``"scale:S"`` a copy with ``scale=S``, ``mean=0``
    and ``std=1`` for every band, so that :func:`normalize` computes ``x_raw / S``."""
    kind, s = parse_normalization(mode)
    if kind == "registry":
        return info
    n = info.num_bands
    return dataclasses.replace(info, scale=float(s), mean=(0.0,) * n, std=(1.0,) * n)


def normalization_formula(info: DatasetInfo, mode: str | None = None) -> str:
    """Human-readable input formula of ``info`` under ``mode`` (for sidecars and reports)."""
    kind, s = parse_normalization(mode)
    if kind == "scale":
        return f"x = x_raw / {s:g}"
    return f"x[c] = (x_raw[c] / {info.scale:g} - mean[c]) / std[c]"


def data_info(cfg_data) -> DatasetInfo:
    """The registry entry a ``config.data`` block selects: ``name`` and ``builder_config``
    (:func:`get_config_info`) with its ``normalization`` mode applied (:func:`with_normalization`).

    ``cfg_data`` is a ConfigDict or a plain dict; a missing ``normalization`` means ``"registry"``.
    """
    get = cfg_data.get
    info = get_config_info(get("name"), get("builder_config", None) or None)
    return with_normalization(info, get("normalization", None))


# ------------------------------------------------------------------------------------------
# Entries added with the TFDS builders of real datasets (tfds_builders/). Statistics
# provenance of these entries (scaled units):
#
# * ``oscd`` and ``dynamic_world``: no data at hand; they reuse the ``ssl4eo_s12`` Sentinel-2
#   L1C statistics (same product level), all bands stored on the 10 m grid.
# * ``rs_segmentation/potsdam``, ``/vaihingen``, ``/loveda``: measured on the mmsegmentation
#   sample crops in ``shared/data/seg_samples_mmseg`` (1, 1 and 3 images): rough estimates.
# * ``rs_segmentation/deepglobe`` and ``/nyc4band``: PLACEHOLDERS (ImageNet RGB statistics;
#   NIR 0.40 / 0.20), no data at hand; re-measure once the data are available.
#
# Datasets with several builder configs that differ in bands (``rs_segmentation``) register
# one entry per config under ``<name>/<config>``; :func:`get_config_info` finds it.
# ------------------------------------------------------------------------------------------

_L1C_MEAN = _REGISTRY["ssl4eo_s12"].mean
_L1C_STD = _REGISTRY["ssl4eo_s12"].std

DYNAMIC_WORLD_CLASSES: tuple[str, ...] = (
    "water",
    "trees",
    "grass",
    "flooded_vegetation",
    "crops",
    "shrub_and_scrub",
    "built",
    "bare",
    "snow_and_ice",
)
ISPRS_CLASSES: tuple[str, ...] = (
    "impervious_surfaces",
    "building",
    "low_vegetation",
    "tree",
    "car",
    "clutter",
)
LOVEDA_CLASSES: tuple[str, ...] = (
    "background",
    "building",
    "road",
    "water",
    "barren",
    "forest",
    "agriculture",
)
DEEPGLOBE_CLASSES: tuple[str, ...] = (
    "urban_land",
    "agriculture_land",
    "rangeland",
    "forest_land",
    "water",
    "barren_land",
)
NYC_LANDCOVER_CLASSES: tuple[str, ...] = (
    "tree_canopy",
    "grass_shrubs",
    "bare_soil",
    "water",
    "buildings",
    "roads",
    "other_impervious",
    "railroads",
)
NIR_WAVELENGTH_NM = 842.0  # nominal (Sentinel-2 B08 centre) for aerial near-infrared bands

register(
    DatasetInfo(
        "oscd",
        bands=S2_BANDS,
        wavelengths_nm=tuple(S2_WAVELENGTHS_NM[b] for b in S2_BANDS),
        gsd_m=(10.0,) * len(S2_BANDS),  # the builder stores every band on the 10 m grid
        mean=_L1C_MEAN,
        std=_L1C_STD,
        scale=10000.0,
        num_classes=2,
        class_names=("no_change", "change"),
        image_size=128,
        task="change_detection",
    )
)

register(
    DatasetInfo(
        "dynamic_world",
        bands=S2_BANDS,
        wavelengths_nm=tuple(S2_WAVELENGTHS_NM[b] for b in S2_BANDS),
        gsd_m=(10.0,) * len(S2_BANDS),
        mean=_L1C_MEAN,
        std=_L1C_STD,
        scale=10000.0,
        num_classes=len(DYNAMIC_WORLD_CLASSES),
        class_names=DYNAMIC_WORLD_CLASSES,
        image_size=256,
        task="segmentation",
        mask_ignore_value=0,  # the builder writes 0 = no label, v = class v - 1
    )
)

register(
    DatasetInfo(
        "rs_segmentation/potsdam",
        bands=("R", "G", "B"),
        wavelengths_nm=RGB_WAVELENGTHS_NM,
        gsd_m=(0.05,) * 3,
        mean=(0.31824, 0.31165, 0.28182),
        std=(0.17249, 0.11180, 0.09602),
        scale=255.0,
        num_classes=len(ISPRS_CLASSES),
        class_names=ISPRS_CLASSES,
        image_size=256,
        task="segmentation",
        mask_ignore_value=0,  # the builder writes 0 = no label, v = class v - 1
    )
)

register(
    DatasetInfo(
        "rs_segmentation/vaihingen",
        bands=("NIR", "R", "G"),  # IRRG false colour
        wavelengths_nm=(NIR_WAVELENGTH_NM, 665.0, 560.0),
        gsd_m=(0.09,) * 3,
        mean=(0.31273, 0.29459, 0.29086),
        std=(0.17411, 0.14145, 0.14056),
        scale=255.0,
        num_classes=len(ISPRS_CLASSES),
        class_names=ISPRS_CLASSES,
        image_size=256,
        task="segmentation",
        mask_ignore_value=0,  # the builder writes 0 = no label, v = class v - 1
    )
)

register(
    DatasetInfo(
        "rs_segmentation/loveda",
        bands=("R", "G", "B"),
        wavelengths_nm=RGB_WAVELENGTHS_NM,
        gsd_m=(0.3,) * 3,
        mean=(0.28397, 0.31670, 0.30247),
        std=(0.11497, 0.10546, 0.09244),
        scale=255.0,
        num_classes=len(LOVEDA_CLASSES),
        class_names=LOVEDA_CLASSES,
        image_size=512,
        task="segmentation",
        mask_ignore_value=0,  # the builder writes 0 = no label, v = class v - 1
    )
)

register(
    DatasetInfo(
        "rs_segmentation/deepglobe",
        bands=("R", "G", "B"),
        wavelengths_nm=RGB_WAVELENGTHS_NM,
        gsd_m=(0.5,) * 3,
        mean=(0.485, 0.456, 0.406),  # placeholder (ImageNet)
        std=(0.229, 0.224, 0.225),
        scale=255.0,
        num_classes=len(DEEPGLOBE_CLASSES),
        class_names=DEEPGLOBE_CLASSES,
        image_size=612,
        task="segmentation",
        mask_ignore_value=0,  # the builder writes 0 = no label, v = class v - 1
    )
)

register(
    DatasetInfo(
        "rs_segmentation/nyc4band",
        bands=("NIR", "R", "G", "B"),
        wavelengths_nm=(NIR_WAVELENGTH_NM,) + RGB_WAVELENGTHS_NM,
        gsd_m=(0.15,) * 4,  # 6-inch orthophotos
        mean=(0.40, 0.485, 0.456, 0.406),  # placeholder (NIR guess + ImageNet RGB)
        std=(0.20, 0.229, 0.224, 0.225),
        scale=255.0,
        num_classes=len(NYC_LANDCOVER_CLASSES),
        class_names=NYC_LANDCOVER_CLASSES,
        image_size=256,
        task="segmentation",
        mask_ignore_value=0,  # the builder writes 0 = no label, v = class v - 1
    )
)


# Dubai aerial imagery ("Semantic segmentation of aerial imagery", Humans in the Loop with MBRSC;
# ``shared/data/dubai_aerial_seg``), read from its folder as it unpacks (no TFDS build). Classes in
# the order of the dataset's own ``classes.json`` (Water, Land (unpaved area), Road, Building,
# Vegetation, Unlabeled), "Unlabeled" left out. The colours are those of the dataset's description:
# the ones ``classes.json`` lists (#50E3C2, #F5A623, ...) are the annotation tool's and occur in no
# mask. Checked on all 63 masks at hand (92.55 Mpx): exactly these 7 colours, no other value.
# "Unlabeled" (0.5 % of the pixels) and the black no-data border (0.6 %, nearly all in Tile 8) are
# ignored: neither is a land-cover class a model can be scored on.
DUBAI_CLASSES: tuple[str, ...] = ("water", "land", "road", "building", "vegetation")
DUBAI_MASK_COLOURS: tuple[tuple[str, str], ...] = (
    ("water", "#E2A929"),
    ("land", "#8429F6"),  # "Land (unpaved area)"
    ("road", "#6EC1E4"),
    ("building", "#3C1098"),
    ("vegetation", "#FEDD3A"),
    ("unlabeled", "#9B9B9B"),  # ignored
    ("no_data", "#000000"),  # ignored: not a class, the border outside the imaged area
)

register(
    DatasetInfo(
        "dubai_aerial_seg",
        bands=("R", "G", "B"),
        wavelengths_nm=RGB_WAVELENGTHS_NM,
        gsd_m=(1.0,) * 3,  # not documented; about 0.5-1 m by eye, varying between tiles
        # measured on all 63 JPEGs at hand (92.55 Mpx, pixels / 255)
        mean=(0.54107, 0.54661, 0.56296),
        std=(0.28505, 0.29157, 0.30678),
        scale=255.0,
        num_classes=len(DUBAI_CLASSES),
        class_names=DUBAI_CLASSES,
        image_size=128,  # the crop side the configs use; the images are 509-2149 px, cut at data.image_size
        task="segmentation",
        mask_ignore_value=0,  # the colours become stored 0 = ignore, v = class v - 1
        mask_colours=DUBAI_MASK_COLOURS,
    )
)


def get_config_info(name: str, config: str | None = None) -> DatasetInfo:
    """THE registry lookup by name: the entry of dataset ``name`` built with builder config
    ``config`` (a config block is looked up with :func:`data_info`, which calls this).

    Returns the per-config entry ``<name>/<config>`` when one is registered (datasets whose
    configs differ in bands, e.g. ``rs_segmentation``), else the dataset's entry. ``name`` may
    itself be ``<name>/<config>``. Raises ConfigError listing the known names for an unknown one.
    """
    base, _, suffix = name.partition("/")
    config = config or suffix or None
    if config and f"{base}/{config}" in _REGISTRY:
        return _REGISTRY[f"{base}/{config}"]
    return _base_info(base)


def check_bands(config, num_bands: int | None = None, what: str | None = None) -> None:
    """ConfigError when the data's band count (``num_bands``, default the registry entry of
    ``config.data``) differs from ``config.model.in_channels``; ``what`` names the data."""
    if num_bands is None:
        info = data_info(config.data)
        num_bands, what = len(info.bands), what or f"dataset {info.name!r} with bands {list(info.bands)}"
    if int(num_bands) != int(config.model.in_channels):
        raise ConfigError(
            f"config.model.in_channels={config.model.in_channels} does not match "
            f"{what or 'the data'} ({num_bands} bands)"
        )


def rgb_indices(bands) -> tuple[int, ...]:
    """Band indices to show as RGB: R/G/B, else Sentinel-2 B04/B03/B02, else the first band."""
    bands = list(bands)
    for triple in (("R", "G", "B"), ("B04", "B03", "B02")):
        if all(b in bands for b in triple):
            return tuple(bands.index(b) for b in triple)
    return (0, 1, 2) if len(bands) >= 3 else (0, 0, 0)
