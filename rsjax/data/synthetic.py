"""Procedural multispectral scene generator: the embedded default dataset (``rs_synthetic``).

Pure numpy, seeded, fast. It paints large Sentinel-2-like tiles and cuts each into a grid of
adjacent, non-overlapping crops that share the tile's scene id, so every code path of rsjax
(scene-aware contrastive pretraining, classification probes, segmentation, change detection)
runs on a fresh machine without downloads. It is a stand-in for tests and demos, not a
benchmark.

How a tile is painted (``tile_size`` x ``tile_size`` pixels, 13 bands B01..B12 incl. B8A, B10):

1. Layout. ``K`` Voronoi cells (seed points uniform in the tile) on domain-warped coordinates
   (a smooth random displacement field makes the borders irregular). Each cell gets a
   land-cover class drawn from a per-tile Dirichlet mixture, so some tiles are mostly water,
   others mostly fields. Optional meandering rivers (water) and straight roads (urban,
   asphalt) are drawn on top.
2. Materials. Every pixel is a linear mix of two *endmembers* (reference spectra, reflectance
   x 1e4) with weight ``m``: ``(1 - m) * E[e1] + m * E[e2]``, times a brightness texture.
   Classes get distinct S2-like spectra: water is dark with NIR/SWIR near zero, vegetation has
   the red edge (B05 -> B07) and a high NIR plateau, soil rises into the SWIR, urban is flat
   and bright. Per class textures: cropland = stripes of green crop vs. soil with a per-field
   orientation and period; forest = crown-scale speckle; urban = concrete with red/grey
   building rectangles; grassland and soil = smooth patches; water = very smooth with some
   sediment. Each cell also gets a small random per-band gain so a class is a spectral
   distribution, not one vector.
3. Acquisition. Per-tile gain (illumination), wavelength-dependent haze (strong in B01/B02,
   ~0 in the SWIR), thin cirrus in B10, and signal-dependent Gaussian sensor noise; clipped to
   0..10000 and stored as uint16.
4. Second date. A copy of the layout with 0-4 change events (new buildings on non-urban
   land, flooding, clearing of vegetation to bare soil) plus non-change variation (crop
   phenology, different illumination/haze/noise). ``change`` is 1 where the land-cover class
   differs between the dates.

Each crop gets ``label`` = its dominant (most frequent) class in ``mask``. Tiles are seeded by
``SeedSequence([seed, tile_index])``, so ``generate(8, seed=s)`` is a prefix of
``generate(96, seed=s)`` and any tile can be regenerated alone.
"""

from __future__ import annotations

import numpy as np

from rsjax.data import registry

CLASS_NAMES = registry.SYNTHETIC_CLASSES
WATER, FOREST, CROPLAND, GRASSLAND, URBAN, BARE_SOIL = range(6)
NUM_CLASSES = len(CLASS_NAMES)
S2_BANDS = registry.S2_BANDS

# Endmember library, reflectance x 1e4 in S2 band order
# B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09  B10   B11   B12
_E = {
    "water": [700, 620, 560, 360, 290, 230, 200, 180, 170, 60, 10, 60, 40],
    "forest": [300, 340, 560, 300, 820, 2300, 2900, 3100, 3200, 1000, 15, 1500, 650],
    "crop": [350, 440, 820, 430, 1350, 3050, 3750, 3950, 4050, 1250, 15, 2050, 980],
    "grass": [460, 560, 880, 720, 1350, 2150, 2550, 2750, 2850, 900, 15, 2500, 1500],
    "concrete": [1100, 1200, 1300, 1400, 1450, 1550, 1650, 1700, 1750, 600, 25, 2200, 2000],
    "soil": [900, 1000, 1350, 1800, 2100, 2300, 2450, 2550, 2650, 850, 20, 3300, 2800],
    "roof_red": [800, 850, 1000, 2300, 2500, 2600, 2650, 2700, 2750, 850, 25, 3000, 2600],
    "roof_grey": [1500, 1600, 1700, 1750, 1800, 1850, 1900, 1950, 2000, 650, 25, 2300, 2100],
    "asphalt": [600, 650, 700, 750, 780, 800, 820, 850, 870, 300, 15, 1000, 950],
    "stubble": [700, 800, 1100, 1400, 1700, 2000, 2200, 2300, 2400, 800, 20, 3000, 2400],
}
ENDMEMBER_NAMES = tuple(_E)
ENDMEMBERS = np.asarray([_E[k] for k in ENDMEMBER_NAMES], np.float32)  # [E, 13]
_EI = {k: i for i, k in enumerate(ENDMEMBER_NAMES)}
# Base endmember of each class (its "pure" spectrum).
CLASS_ENDMEMBER = np.asarray([_EI["water"], _EI["forest"], _EI["crop"], _EI["grass"], _EI["concrete"], _EI["soil"]])
# Additive haze per band at strength 1 (path radiance falls steeply with wavelength).
_HAZE = np.asarray([900, 700, 450, 280, 220, 180, 150, 130, 120, 40, 0, 20, 8], np.float32)

# Band subsets offered through ``bands=`` (names in S2 order).
BAND_SUBSETS: dict[int, tuple[str, ...]] = {
    13: S2_BANDS,
    12: tuple(b for b in S2_BANDS if b != "B10"),  # L2A / BigEarthNet
    4: ("B02", "B03", "B04", "B08"),
    3: ("B04", "B03", "B02"),  # RGB order
}


def band_names(bands: int = 13) -> tuple[str, ...]:
    """Names of the bands ``generate(..., bands=bands)`` returns, in order."""
    if bands not in BAND_SUBSETS:
        raise ValueError(f"bands={bands} not supported; choose one of {sorted(BAND_SUBSETS)}")
    return BAND_SUBSETS[bands]


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] linear-interpolation weights mapping a coarse grid onto n_out pixels."""
    pos = (np.arange(n_out) + 0.5) * (n_in - 1) / n_out
    lo = np.minimum(pos.astype(np.int64), n_in - 2)
    frac = (pos - lo).astype(np.float32)
    w = np.zeros((n_out, n_in), np.float32)
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] = frac
    return w


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """``n`` smooth random fields [n, size, size], ~N(0, 1) on a ``cells`` x ``cells`` lattice,
    bilinearly interpolated (separable matrix products, so it costs almost nothing)."""
    cells = max(2, int(cells))
    g = rng.standard_normal((n, cells, cells), dtype=np.float32)
    w = _interp_matrix(size, cells)
    return np.matmul(np.matmul(w, g), w.T)


def _uniform_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """Zero-mean, unit-variance uniform noise (float32) from random bytes."""
    n = int(np.prod(shape))
    u = np.frombuffer(rng.bytes(n), np.uint8).reshape(shape).astype(np.float32)
    u -= np.float32(127.5)
    u *= np.float32(1.0 / 73.9)  # std of the discrete uniform on 0..255 is 73.9
    return u


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 box blur with edge padding (speckle -> crown-sized blobs)."""
    p = np.pad(x, 1, mode="edge")
    r = p[:-2] + p[1:-1] + p[2:]
    return (r[:, :-2] + r[:, 1:-1] + r[:, 2:]) / 9.0


class _Tile:
    """Layout of one tile: class map and per-pixel material mix (before acquisition)."""

    __slots__ = ("cls", "e1", "e2", "m", "gain", "cell", "cell_gain", "crop_cells")

    def copy(self) -> "_Tile":
        t = _Tile()
        for k in self.__slots__:
            v = getattr(self, k)
            setattr(t, k, v.copy() if isinstance(v, np.ndarray) else v)
        return t


def _layout(rng: np.random.Generator, size: int, num_classes: int) -> _Tile:
    area = (size / 128.0) ** 2
    k = int(np.clip(rng.integers(7, 15) * area, 3, 64))
    # Class probabilities of this tile: a Dirichlet draw mixed with uniform so every class
    # stays possible; the mixture makes tiles differ in character (coastal, rural, urban ...).
    p = 0.55 * rng.dirichlet(np.full(num_classes, 0.7)) + 0.45 / num_classes
    cell_cls = rng.choice(num_classes, size=k, p=p)

    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    warp = _smooth_noise(rng, 2, size, 5) * (size * 0.06)
    wy, wx = yy + warp[0], xx + warp[1]
    seeds = rng.uniform(0, size, size=(k, 2)).astype(np.float32)
    d = (wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2
    cell = np.argmin(d, axis=0)
    cls = cell_cls[cell]

    # Rivers: a meandering band of water across the tile.
    if rng.random() < 0.35:
        theta = rng.uniform(0, np.pi)
        c, s = np.cos(theta), np.sin(theta)
        u = (wx - size / 2) * c + (wy - size / 2) * s  # along-river coordinate
        v = -(wx - size / 2) * s + (wy - size / 2) * c  # across-river coordinate
        amp = rng.uniform(2, size * 0.12)
        lam = rng.uniform(size * 0.4, size * 1.2)
        off = rng.uniform(-size * 0.3, size * 0.3)
        centre = off + amp * np.sin(2 * np.pi * u / lam + rng.uniform(0, 2 * np.pi))
        half_width = rng.uniform(1.5, 4.0) * max(1.0, size / 128)
        cls = np.where(np.abs(v - centre) < half_width, WATER, cls)

    t = _Tile()
    t.cls = cls.astype(np.int64)
    t.cell = cell
    t.e1 = CLASS_ENDMEMBER[np.minimum(t.cls, NUM_CLASSES - 1)].copy()
    t.e2 = t.e1.copy()
    t.m = np.zeros((size, size), np.float32)
    t.gain = np.ones((size, size), np.float32)
    # A per-cell, smooth-over-bands multiplicative jitter: each parcel has its own spectrum.
    tilt = rng.normal(0, 0.08, size=(k, 1)) * np.linspace(-1, 1, 13)[None]
    t.cell_gain = (rng.uniform(0.8, 1.2, size=(k, 1)) * (1 + tilt)).astype(np.float32)
    t.crop_cells = None

    lo = _smooth_noise(rng, 3, size, 6)  # low-frequency fields for grass / soil / water
    speck = _box3(rng.standard_normal((size, size)).astype(np.float32))

    # Forest: crown-scale speckle plus shadowing.
    f = t.cls == FOREST
    t.gain[f] = np.maximum(0.2, 1.0 + 0.55 * speck[f] + 0.05 * lo[0][f])
    # Grassland: smooth patches with some exposed soil.
    g = t.cls == GRASSLAND
    t.e2[g] = _EI["soil"]
    t.m[g] = np.clip(0.15 + 0.12 * lo[1][g], 0, 0.6)
    t.gain[g] = 1.0 + 0.06 * lo[2][g]
    # Bare soil: moisture patches and a little stubble.
    b = t.cls == BARE_SOIL
    t.e2[b] = _EI["stubble"]
    t.m[b] = np.clip(0.2 + 0.2 * lo[0][b], 0, 1)
    t.gain[b] = 1.0 + 0.1 * lo[2][b] + 0.05 * speck[b]
    # Water: very smooth with sediment plumes.
    w = t.cls == WATER
    t.e2[w] = _EI["soil"]
    t.m[w] = np.clip(0.05 + 0.05 * lo[1][w], 0, 0.2)
    t.gain[w] = 1.0 + 0.03 * lo[2][w]

    _paint_cropland(rng, t, yy, xx, t.cls == CROPLAND)
    if num_classes > URBAN:
        _paint_urban(rng, t, t.cls == URBAN)
        # Roads: straight asphalt lines, more likely where there is urban land.
        n_roads = rng.poisson(0.6 + 1.5 * (cls == URBAN).mean())
        for _ in range(min(n_roads, 3)):
            theta = rng.uniform(0, np.pi)
            rho = rng.uniform(-0.4, 0.4) * size
            dist = (xx - size / 2) * np.cos(theta) + (yy - size / 2) * np.sin(theta) - rho
            road = (np.abs(dist) < rng.uniform(0.6, 1.3)) & (t.cls != WATER)
            t.cls[road] = URBAN
            t.e1[road] = _EI["asphalt"]
            t.m[road] = 0.0
            t.gain[road] = 1.0
    return t


def _paint_cropland(rng, t: _Tile, yy, xx, sel: np.ndarray) -> None:
    """Fields: per-cell stripe orientation/period, crop vs. soil/stubble mix."""
    if not sel.any():
        t.crop_cells = {}
        return
    cells = np.unique(t.cell[sel])
    n = int(cells.max()) + 1
    theta = rng.uniform(0, np.pi, n).astype(np.float32)
    period = rng.uniform(3.0, 9.0, n).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    base = rng.uniform(0.05, 0.55, n).astype(np.float32)  # bare fraction (phenology)
    amp = rng.uniform(0.2, 0.45, n).astype(np.float32)
    other = np.where(rng.random(n) < 0.5, _EI["soil"], _EI["stubble"])
    c = t.cell[sel]
    proj = xx[sel] * np.cos(theta[c]) + yy[sel] * np.sin(theta[c])
    stripes = np.sin(2 * np.pi * proj / period[c] + phase[c])
    t.e2[sel] = other[c]
    t.m[sel] = np.clip(base[c] + amp[c] * stripes, 0, 1)
    t.crop_cells = {"base": base, "amp": amp, "theta": theta, "period": period, "phase": phase}


def _paint_urban(rng, t: _Tile, sel: np.ndarray) -> None:
    """Concrete with urban green, then building rectangles (red/grey roofs) inside urban."""
    if not sel.any():
        return
    t.e1[sel] = _EI["concrete"]
    t.e2[sel] = _EI["grass"]
    t.m[sel] = np.clip(0.25 + 0.2 * rng.standard_normal(sel.sum()).astype(np.float32), 0, 0.7)
    _add_buildings(rng, t, sel, density=0.03)


def _add_buildings(rng, t: _Tile, region: np.ndarray, density: float) -> np.ndarray:
    """Stamps building rectangles whose centres fall in ``region``; returns the roof mask."""
    size = t.cls.shape[0]
    ys, xs = np.nonzero(region)
    roofs = np.zeros_like(region)
    if ys.size == 0:
        return roofs
    n = max(1, int(ys.size * density))
    pick = rng.integers(0, ys.size, n)
    hs = rng.integers(2, 6, n)
    ws = rng.integers(2, 6, n)
    roof_kind = np.where(rng.random(n) < 0.55, _EI["roof_red"], _EI["roof_grey"])
    for y, x, h, w, r in zip(ys[pick], xs[pick], hs, ws, roof_kind):
        y0, x0 = max(0, y - h // 2), max(0, x - w // 2)
        y1, x1 = min(size, y0 + h), min(size, x0 + w)
        box = region[y0:y1, x0:x1]
        t.e1[y0:y1, x0:x1][box] = r
        t.m[y0:y1, x0:x1][box] = 0.0
        t.gain[y0:y1, x0:x1][box] = 1.0
        roofs[y0:y1, x0:x1] |= box
    return roofs


def _blob(rng, size: int, radius: float) -> np.ndarray:
    """A random irregular disc (warped distance threshold)."""
    cy, cx = rng.uniform(0, size, 2)
    yy, xx = np.ogrid[:size, :size]
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return r < radius * (1.0 + 0.35 * _smooth_noise(rng, 1, size, 4)[0])


def _second_date(rng, t: _Tile, num_classes: int) -> _Tile:
    """Date-2 layout: seasonal variation everywhere + a few land-cover change events."""
    t2 = t.copy()
    size = t.cls.shape[0]
    # Crop phenology moves on: fields green up or get harvested (not a land-cover change).
    crop = t.cls == CROPLAND
    if crop.any() and t.crop_cells:
        shift = rng.normal(0, 0.15, len(t.crop_cells["base"])).astype(np.float32)
        t2.m[crop] = np.clip(t.m[crop] + shift[t.cell[crop]], 0, 1)
    kinds = [k for k, need in (("buildings", URBAN), ("flood", WATER), ("clearing", BARE_SOIL)) if need < num_classes]
    area = (size / 128.0) ** 2
    n_events = 0 if rng.random() < 0.1 else int(rng.integers(1, 5) * max(area, 0.25) + 0.5)
    for _ in range(n_events if kinds else 0):
        kind = kinds[rng.integers(len(kinds))]
        blob = _blob(rng, size, rng.uniform(5, 16) * max(1.0, size / 128) ** 0.5)
        if kind == "buildings":
            reg = blob & (t2.cls != WATER) & (t2.cls != URBAN)
            if not reg.any():
                continue
            t2.cls[reg] = URBAN
            t2.e1[reg] = _EI["concrete"]
            t2.e2[reg] = _EI["soil"]
            t2.m[reg] = 0.3
            t2.gain[reg] = 1.0
            _add_buildings(rng, t2, reg, density=0.08)
        elif kind == "flood":
            reg = blob & (t2.cls != WATER)
            t2.cls[reg] = WATER
            t2.e1[reg] = _EI["water"]
            t2.e2[reg] = _EI["soil"]
            t2.m[reg] = 0.12  # turbid flood water
            t2.gain[reg] = 1.0
        else:  # clearing: vegetation -> bare soil
            reg = blob & np.isin(t2.cls, (FOREST, CROPLAND, GRASSLAND))
            t2.cls[reg] = BARE_SOIL
            t2.e1[reg] = _EI["soil"]
            t2.e2[reg] = _EI["stubble"]
            t2.m[reg] = 0.3
            t2.gain[reg] = 1.0
    return t2


def _acquire(rng, t: _Tile, band_idx: np.ndarray) -> np.ndarray:
    """Materials -> top-of-atmosphere-like uint16 reflectance x 1e4, [H, W, B]."""
    size = t.cls.shape[0]
    lib = ENDMEMBERS[:, band_idx]
    a = np.take(lib, t.e1, axis=0)
    img = np.subtract(np.take(lib, t.e2, axis=0), a)
    img *= t.m[..., None]
    img += a
    # Texture x parcel spectrum x illumination (sun angle / season, per tile).
    gain = np.take(t.cell_gain[:, band_idx], t.cell, axis=0)
    gain *= t.gain[..., None] * np.float32(rng.uniform(0.75, 1.25))
    img *= gain
    # Atmosphere: haze (smooth over the tile) adds path radiance, strongest at short waves.
    strength = np.float32(1.5 * rng.uniform(0.0, 1.0) ** 2)
    haze = strength * (1.0 + 0.3 * _smooth_noise(rng, 1, size, 3)[0])
    img += haze[..., None] * _HAZE[band_idx]
    b10 = np.nonzero(band_idx == S2_BANDS.index("B10"))[0]
    if b10.size:  # thin cirrus shows up in B10
        cirrus = np.maximum(0, rng.uniform(-150, 250) + 80 * _smooth_noise(rng, 1, size, 4)[0])
        img[..., b10[0]] += cirrus
    # Signal-dependent sensor noise, sigma = 2% of the signal + 15 DN. Uniform, not Gaussian,
    # noise from random bytes: 4x cheaper than standard_normal and the shape is irrelevant here.
    noise = _uniform_noise(rng, img.shape)
    noise *= img
    noise *= np.float32(0.02)
    img += noise
    img += _uniform_noise(rng, img.shape[:2] + (1,)) * np.float32(15.0) + np.float32(0.5)
    np.clip(img, 0, 10000, out=img)
    return img.astype(np.uint16)


def generate_tile(
    tile_index: int, *, tile_size: int = 128, bands: int = 13, num_classes: int = NUM_CLASSES, seed: int = 0
) -> dict[str, np.ndarray]:
    """One full tile: ``image``/``image2`` uint16 [T,T,B], ``mask``/``mask2`` uint8 [T,T],
    ``change`` uint8 [T,T]. Deterministic in ``(seed, tile_index)``."""
    if not 2 <= num_classes <= NUM_CLASSES:
        raise ValueError(f"num_classes must be in [2, {NUM_CLASSES}], got {num_classes}")
    if tile_size < 8:
        raise ValueError(f"tile_size must be >= 8, got {tile_size}")
    names = band_names(bands)
    band_idx = np.asarray([S2_BANDS.index(b) for b in names])
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(tile_index)]))
    t1 = _layout(rng, tile_size, num_classes)
    t2 = _second_date(rng, t1, num_classes)
    image = _acquire(rng, t1, band_idx)
    image2 = _acquire(rng, t2, band_idx)
    return {
        "image": image,
        "image2": image2,
        "mask": t1.cls.astype(np.uint8),
        "mask2": t2.cls.astype(np.uint8),
        "change": (t1.cls != t2.cls).astype(np.uint8),
    }


def generate(
    num_tiles: int,
    *,
    tile_size: int = 128,
    crop_size: int = 32,
    bands: int = 13,
    num_classes: int = NUM_CLASSES,
    seed: int = 0,
    scene_offset: int = 0,
) -> dict[str, np.ndarray]:
    """Generates ``num_tiles`` tiles and cuts each into ``(tile_size // crop_size)**2`` crops.

    Args:
      num_tiles: number of tiles (scenes).
      tile_size: side of a tile in pixels.
      crop_size: side of a crop; crops form a non-overlapping grid (row-major) over the tile.
      bands: 13 (all S2 bands), 12 (no B10), 4 (B02 B03 B04 B08) or 3 (B04 B03 B02);
        names from :func:`band_names`.
      num_classes: use the first ``num_classes`` land-cover classes of :data:`CLASS_NAMES`.
      seed: base seed; tile ``i`` uses ``SeedSequence([seed, i])``.
      scene_offset: added to the tile index to form ``scene_id`` (keeps ids of different
        splits disjoint).

    Returns:
      dict of numpy arrays over ``N = num_tiles * (tile_size // crop_size)**2`` crops:
      ``image`` uint16 [N,c,c,B] reflectance x 1e4 in 0..10000; ``image2`` the same crop at a
      second date; ``mask`` uint8 [N,c,c] class per pixel; ``change`` uint8 [N,c,c] binary
      change map between the dates; ``label`` int32 [N] dominant class of ``mask``;
      ``scene_id`` int32 [N] = ``scene_offset + tile index``; ``crop_yx`` int32 [N,2] the
      crop's top-left pixel in its tile.
    """
    if crop_size > tile_size:
        raise ValueError(f"crop_size={crop_size} is larger than tile_size={tile_size}")
    g = tile_size // crop_size
    nb = len(band_names(bands))
    n = num_tiles * g * g
    out = {
        "image": np.empty((n, crop_size, crop_size, nb), np.uint16),
        "image2": np.empty((n, crop_size, crop_size, nb), np.uint16),
        "mask": np.empty((n, crop_size, crop_size), np.uint8),
        "change": np.empty((n, crop_size, crop_size), np.uint8),
        "label": np.empty((n,), np.int32),
        "scene_id": np.empty((n,), np.int32),
        "crop_yx": np.empty((n, 2), np.int32),
    }
    j = 0
    for i in range(num_tiles):
        tile = generate_tile(i, tile_size=tile_size, bands=bands, num_classes=num_classes, seed=seed)
        for cy in range(g):
            for cx in range(g):
                sl = (slice(cy * crop_size, (cy + 1) * crop_size), slice(cx * crop_size, (cx + 1) * crop_size))
                for key in ("image", "image2", "mask", "change"):
                    out[key][j] = tile[key][sl]
                counts = np.bincount(out["mask"][j].ravel(), minlength=num_classes)
                out["label"][j] = counts.argmax()
                out["scene_id"][j] = scene_offset + i
                out["crop_yx"][j] = (cy * crop_size, cx * crop_size)
                j += 1
    return out


def band_statistics(
    num_tiles: int = 96, *, tile_size: int = 128, seed: int = 0, bands: int = 13
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of ``image / 10000`` (the numbers stored in the registry)."""
    x = np.concatenate(
        [
            generate_tile(i, tile_size=tile_size, seed=seed, bands=bands)["image"].reshape(-1, len(band_names(bands)))
            for i in range(num_tiles)
        ]
    )
    x = x.astype(np.float64) / 10000.0
    return x.mean(0), x.std(0)
