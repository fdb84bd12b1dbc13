"""Synthetic, georeferenced SAR-like scenes with ground truth, deterministic for a seed.

The drawing is pure numpy (functions that take a random generator and sizes and return arrays);
files are written only by :func:`write_scene`. Units are explicit in names: ``_px`` is scene
pixels (column x, row y, boxes ``[x1, y1, x2, y2]`` with exclusive x2/y2, i.e. pixel edges),
``_m`` is metres in the scene's UTM CRS, lon/lat are degrees in EPSG:4326.

A scene is sea backscatter (multi-look speckle, a range gradient, wind patches), optionally a
coastline with textured land and bright unlabelled scatterers on it, sea distractors (rain cells,
dark slicks) and two labelled classes: ``ship`` (elongated hull at any heading, turbulent wake and
Kelvin arms) and ``platform`` (compact bright square structure with cross-shaped sidelobes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CLASSES: tuple[str, ...] = ("ship", "platform")
# The segmentation target's classes, in the order of its mask values (0 = sea, the background).
SEG_CLASSES: tuple[str, ...] = ("sea", "land", "slick")
# A slick's truth is where its damping is at least half its peak (the half-maximum contour).
SLICK_HALF_DAMPING = 0.5
PIXEL_SIZE_M = 10.0
DEFAULT_CRS = "EPSG:32631"  # UTM zone 31N (North Sea)
DN_PER_SIGMA0 = 1000.0  # digital number = linear backscatter x 1000, clipped to uint16
MAX_BANDS = 4

SPECKLE_LOOKS = 4  # of the multi-look speckle every band is drawn with
SHIP_LENGTH_PX = (9.0, 38.0)
PLATFORM_SIDE_PX = (5, 10)


@dataclass(frozen=True)
class SceneConfig:
    """What to draw. Counts of None draw a density-based number for the scene area."""

    width_px: int = 2048
    height_px: int = 2048
    bands: int = 1
    n_ships: int | None = None
    n_platforms: int | None = None
    land: bool | None = None  # None: a coastline in about half the scenes
    distractors: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.bands <= MAX_BANDS:
            raise ValueError(f"bands must be 1..{MAX_BANDS}, got {self.bands}")
        if self.width_px < 32 or self.height_px < 32:
            raise ValueError(f"scene must be at least 32x32 pixels, got {self.width_px}x{self.height_px}")


@dataclass(frozen=True)
class TruthObject:
    class_name: str
    box_px: tuple[int, int, int, int]  # x1, y1, x2, y2 in scene pixels, x2/y2 exclusive
    heading_deg: float | None = None  # ships only: clockwise from north (up)
    length_m: float | None = None

    @property
    def class_id(self) -> int:
        return CLASSES.index(self.class_name)


@dataclass
class Scene:
    seed: int
    image: np.ndarray  # [bands, height, width] uint16 digital numbers
    objects: list[TruthObject]
    transform: Any  # rasterio Affine: pixel (col, row) -> map (x_m, y_m)
    crs: str = DEFAULT_CRS
    land_fraction: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None  # [H, W] uint8 index into SEG_CLASSES (the segmentation truth)

    @property
    def boxes_px(self) -> np.ndarray:
        return np.array([o.box_px for o in self.objects], dtype=np.float32).reshape(-1, 4)

    @property
    def class_ids(self) -> np.ndarray:
        return np.array([o.class_id for o in self.objects], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Pure drawing functions (linear backscatter, sigma0 units)
# ---------------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, height_px: int, width_px: int, cell_px: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a coarse random grid bilinearly upsampled."""
    gh, gw = height_px // cell_px + 2, width_px // cell_px + 2
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    ys = (np.arange(height_px, dtype=np.float32) + 0.5) / cell_px
    xs = (np.arange(width_px, dtype=np.float32) + 0.5) / cell_px
    y0 = ys.astype(np.int64)
    x0 = xs.astype(np.int64)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    fy = fy * fy * (3 - 2 * fy)
    fx = fx * fx * (3 - 2 * fx)
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def sea_sigma0(rng: np.random.Generator, height_px: int, width_px: int) -> np.ndarray:
    """Mean sea backscatter: a level, a range (incidence-angle) gradient and wind patches."""
    level = rng.uniform(0.06, 0.25)
    gradient = rng.uniform(0.5, 1.5)  # far/near range ratio
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height_px, 0:width_px].astype(np.float32)
    t = (xs * math.cos(angle) + ys * math.sin(angle)) / max(height_px, width_px)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    ramp = 1.0 + (gradient - 1.0) * t
    wind = 1.0 + 0.35 * smooth_noise(rng, height_px, width_px, cell_px=int(rng.integers(64, 256)))
    return (level * ramp * wind).astype(np.float32)


def coast_mask(rng: np.random.Generator, height_px: int, width_px: int) -> np.ndarray:
    """Land (True) on one side of a rough coastline that runs across the scene."""
    side = int(rng.integers(0, 4))  # land to the north, east, south or west
    along = width_px if side in (0, 2) else height_px
    across = height_px if side in (0, 2) else width_px
    pos = np.arange(along, dtype=np.float32)
    depth = rng.uniform(0.12, 0.4) * across
    line = np.full(along, depth, dtype=np.float32)
    for octave in range(1, 6):
        freq = rng.uniform(0.5, 1.5) * octave * 2 * math.pi / along
        line += rng.uniform(0.02, 0.08) * across / octave * np.sin(freq * pos + rng.uniform(0, 6.3))
    coord = np.arange(across, dtype=np.float32)[:, None]  # [across, along]
    land = coord < line[None, :]
    if side in (1, 3):
        land = land.T
    if side == 1:
        land = land[:, ::-1]
    if side == 2:
        land = land[::-1, :]
    return np.ascontiguousarray(land)


def land_sigma0(rng: np.random.Generator, height_px: int, width_px: int) -> np.ndarray:
    """Textured land backscatter (fields, relief), brighter than the sea."""
    base = rng.uniform(0.25, 0.6)
    tex = (
        1.0
        + 0.5 * smooth_noise(rng, height_px, width_px, 48)
        + 0.25 * smooth_noise(rng, height_px, width_px, 12)
    )
    return (base * np.clip(tex, 0.2, None)).astype(np.float32)


def land_scatterers(
    rng: np.random.Generator, land: np.ndarray, count: int
) -> list[tuple[int, int, np.ndarray]]:
    """Bright unlabelled points and small blocks on land (buildings, pylons): (y0, x0, patch)."""
    ys, xs = np.nonzero(land)
    out: list[tuple[int, int, np.ndarray]] = []
    if len(ys) == 0:
        return out
    for i in rng.integers(0, len(ys), size=count):
        h, w = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        out.append((int(ys[i]), int(xs[i]), np.full((h, w), rng.uniform(3.0, 30.0), dtype=np.float32)))
    return out


def gaussian_blob(size_px: float, amplitude: float, aspect: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """A (possibly elongated) Gaussian patch, used for rain cells (bright) and slicks (dark)."""
    half = math.ceil(2.5 * size_px * max(aspect, 1.0))
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    return (amplitude * np.exp(-0.5 * ((u / (size_px * aspect)) ** 2 + (v / size_px) ** 2))).astype(
        np.float32
    )


def ship_patch(
    length_px: float,
    width_px: float,
    heading_deg: float,
    brightness: float,
    wake_strength: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A ship centred in a square patch: (hull additive sigma0, hull mask, wake multiplier, half).

    Heading is clockwise from north; the wake trails behind the stern. The patch centre is pixel
    (half, half) (its centre at half + 0.5).
    """
    wake_len = length_px * rng.uniform(2.0, 5.0)
    half = math.ceil(length_px / 2 + wake_len) + 2
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    th = math.radians(heading_deg)
    # unit vector of the bow in image coordinates (x right, y down)
    bx, by = math.sin(th), -math.cos(th)
    u = xs * bx + ys * by  # along-track, positive towards the bow
    v = -xs * by + ys * bx  # across-track
    half_l, half_w = length_px / 2, width_px / 2
    # hull: rectangle with a tapered bow
    taper = np.clip((half_l - u) / max(width_px, 1.0), 0.0, 1.0)
    hull = (np.abs(u) <= half_l) & (np.abs(v) <= half_w * np.maximum(taper, 0.35))
    profile = 0.6 + 0.4 * np.cos(np.clip(u / half_l, -1, 1) * 1.3)  # brighter amidships
    hull_add = np.where(hull, brightness * profile, 0.0).astype(np.float32)
    # wake: dark turbulent centre line and two bright Kelvin arms (19.5 degrees) behind the stern
    behind = -(u + half_l)  # distance behind the stern
    wake = np.ones_like(xs)
    on = behind > 0
    fade = np.exp(-np.clip(behind, 0, None) / (0.6 * wake_len))
    turb = on & (np.abs(v) <= 0.5 + 0.4 * width_px + 0.03 * behind)
    wake = np.where(turb, 1.0 - wake_strength * 0.7 * fade, wake)
    arm = 0.353 * np.clip(behind, 0, None)  # tan(19.5 deg)
    for sign in (-1.0, 1.0):
        kelvin = on & (np.abs(v - sign * arm) <= 0.8) & (behind < wake_len)
        wake = np.where(kelvin, 1.0 + wake_strength * 1.5 * fade, wake)
    wake = np.where(hull, 1.0, wake).astype(np.float32)
    return hull_add, hull, wake, half


def platform_patch(
    side_px: int, brightness: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """A platform: bright square deck (with some structure) and cross-shaped sidelobes.

    Returns (additive sigma0, deck mask, half); the deck's top-left pixel is (half, half).
    """
    lobe = int(rng.integers(12, 30))
    half = lobe + side_px
    size = 2 * half + side_px
    add = np.zeros((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    deck = brightness * rng.uniform(0.5, 1.0, size=(side_px, side_px)).astype(np.float32)
    deck[[0, -1], :] *= 1.3
    deck[:, [0, -1]] *= 1.3
    add[half : half + side_px, half : half + side_px] = deck
    mask[half : half + side_px, half : half + side_px] = True
    c = half + side_px // 2
    d = np.abs(np.arange(size, dtype=np.float32) - c)
    lobe_amp = brightness * rng.uniform(0.01, 0.04) * np.exp(-d / (lobe / 2.5))
    lobe_amp[np.abs(np.arange(size) - c) > lobe + side_px // 2] = 0
    add[c, :] = np.maximum(add[c, :], lobe_amp)  # range sidelobe (one row)
    add[:, c] = np.maximum(add[:, c], lobe_amp)  # azimuth sidelobe (one column)
    add[mask] = deck.ravel()
    return add, mask, half


def speckle(rng: np.random.Generator, shape: tuple[int, ...], looks: int = SPECKLE_LOOKS) -> np.ndarray:
    """Multiplicative multi-look speckle: Gamma(L, 1/L), mean 1."""
    return rng.gamma(looks, 1.0 / looks, size=shape).astype(np.float32)


def paste(canvas: np.ndarray, y0: int, x0: int, patch: np.ndarray, op: str) -> None:
    """Combine `patch` into canvas at (y0, x0), clipped to the canvas. op: add, mul or max (on
    boolean masks: or). The one home of drawing a patch into a scene (models.slickceiling too)."""
    h, w = canvas.shape[-2:]
    py0, px0 = max(0, -y0), max(0, -x0)
    cy0, cx0 = max(0, y0), max(0, x0)
    cy1, cx1 = min(h, y0 + patch.shape[0]), min(w, x0 + patch.shape[1])
    if cy1 <= cy0 or cx1 <= cx0:
        return
    src = patch[py0 : py0 + cy1 - cy0, px0 : px0 + cx1 - cx0]
    dst = canvas[..., cy0:cy1, cx0:cx1]
    if op == "add":
        dst += src
    elif op == "mul":
        dst *= src
    else:
        np.maximum(dst, src, out=dst)


def _mask_box(mask: np.ndarray, y0: int, x0: int) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)


def _free(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]], margin: int) -> bool:
    x1, y1, x2, y2 = box
    return all(
        x2 + margin <= a1 or a2 + margin <= x1 or y2 + margin <= b1 or b2 + margin <= y1
        for a1, b1, a2, b2 in taken
    )


def draw_scene(seed: int, config: SceneConfig) -> tuple[np.ndarray, list[TruthObject], float]:
    """The scene's digital numbers [bands, H, W] uint16, its objects and its land fraction."""
    image, objects, land_fraction, _mask = draw_scene_with_mask(seed, config)
    return image, objects, land_fraction


@dataclass(frozen=True)
class SlickBlob:
    """One slick as the generator drew it: a Gaussian damping patch (:func:`gaussian_blob` of
    these arguments) multiplied into the sea at patch origin (y0, x0), in scene pixels."""

    y0: int
    x0: int
    size_px: float
    amplitude: float  # the peak damping: the fraction of the backscatter removed at the centre
    aspect: float
    angle_rad: float

    def damping(self) -> np.ndarray:
        return gaussian_blob(self.size_px, self.amplitude, self.aspect, self.angle_rad)


@dataclass(frozen=True)
class SceneLayers:
    """Everything :func:`draw_scene_layers` knows about a scene: what a sensor would see and the
    truths behind it (what a model's ceiling is measured against, never what it is given)."""

    image: np.ndarray  # [bands, H, W] uint16 digital numbers
    objects: list[TruthObject]
    land_fraction: float
    mask: np.ndarray  # [H, W] uint8 indices into SEG_CLASSES
    noise_free: np.ndarray  # [H, W] float32 band 0's mean backscatter (linear), before speckle
    slicks: tuple[SlickBlob, ...]


def draw_scene_with_mask(
    seed: int, config: SceneConfig
) -> tuple[np.ndarray, list[TruthObject], float, np.ndarray]:
    """:func:`draw_scene` plus its segmentation truth: [H, W] uint8 indices into SEG_CLASSES.

    Land is the coast mask; a slick is the half-maximum contour of its damping, at sea only. The
    mask draws no random numbers, so the pixels are those of :func:`draw_scene`, bit for bit."""
    layers = draw_scene_layers(seed, config)
    return layers.image, layers.objects, layers.land_fraction, layers.mask


def draw_scene_layers(seed: int, config: SceneConfig) -> SceneLayers:
    """The scene of `seed` with its truth layers (:class:`SceneLayers`); the pixels are those of
    :func:`draw_scene`, bit for bit."""
    rng = np.random.default_rng(seed)
    h, w = config.height_px, config.width_px
    area_km2 = h * w * (PIXEL_SIZE_M / 1000.0) ** 2
    sigma0 = sea_sigma0(rng, h, w)
    has_land = bool(rng.random() < 0.5) if config.land is None else config.land
    land = coast_mask(rng, h, w) if has_land else np.zeros((h, w), dtype=bool)
    if has_land:
        sigma0 = np.where(land, land_sigma0(rng, h, w), sigma0)
    sea_level = float(np.median(sigma0[~land])) if (~land).any() else 0.1
    slick = np.zeros((h, w), dtype=bool)
    slicks: list[SlickBlob] = []

    bright = np.zeros((h, w), dtype=np.float32)  # point-like additive targets (before speckle)
    if config.distractors:
        n_rain = rng.poisson(area_km2 / 150.0) + int(rng.random() < 0.5)
        for _ in range(n_rain):
            blob = gaussian_blob(
                rng.uniform(8, 40),
                rng.uniform(1.0, 3.0) * sea_level,
                rng.uniform(1.0, 2.0),
                rng.uniform(0, math.pi),
            )
            paste(
                sigma0,
                int(rng.integers(0, h)) - blob.shape[0] // 2,
                int(rng.integers(0, w)) - blob.shape[1] // 2,
                blob,
                "add",
            )
        n_slick = rng.poisson(area_km2 / 200.0) + int(rng.random() < 0.5)
        for _ in range(n_slick):
            shape = (rng.uniform(3, 12), rng.uniform(0.4, 0.8), rng.uniform(3, 10), rng.uniform(0, math.pi))
            blob = gaussian_blob(*shape)
            y0 = int(rng.integers(0, h)) - blob.shape[0] // 2
            x0 = int(rng.integers(0, w)) - blob.shape[1] // 2
            slicks.append(SlickBlob(y0, x0, *shape))
            paste(sigma0, y0, x0, 1.0 - blob, "mul")
            paste(slick, y0, x0, blob >= SLICK_HALF_DAMPING * float(blob.max()), "max")
        if has_land:
            for y0, x0, patch in land_scatterers(rng, land, rng.poisson(area_km2 / 3.0) + 2):
                paste(bright, y0, x0, patch, "max")
        # isolated bright sea clutter: single-pixel spikes
        for _ in range(rng.poisson(area_km2 / 4.0)):
            paste(
                bright,
                int(rng.integers(0, h)),
                int(rng.integers(0, w)),
                np.full((1, 1), rng.uniform(1.0, 4.0), np.float32),
                "max",
            )

    n_ships = config.n_ships if config.n_ships is not None else int(rng.poisson(area_km2 / 17.0))
    n_platforms = config.n_platforms if config.n_platforms is not None else int(rng.poisson(area_km2 / 50.0))
    kinds = ["ship"] * n_ships + ["platform"] * n_platforms
    rng.shuffle(kinds)
    taken: list[tuple[int, int, int, int]] = []
    objects: list[TruthObject] = []
    margin = 3
    for kind in kinds:
        for _attempt in range(30):
            cy, cx = int(rng.integers(margin, h - margin)), int(rng.integers(margin, w - margin))
            if land[max(0, cy - 24) : cy + 25, max(0, cx - 24) : cx + 25].any():
                continue
            if kind == "ship":
                length = float(rng.uniform(*SHIP_LENGTH_PX))
                width = max(2.5, length * rng.uniform(0.14, 0.22))
                heading = float(rng.uniform(0, 360))
                hull_add, hull, wake, half = ship_patch(
                    length, width, heading, float(rng.uniform(3.0, 25.0)), float(rng.uniform(0.4, 1.0)), rng
                )
                y0, x0 = cy - half, cx - half
                box = _mask_box(hull, y0, x0)
                if box is None or box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
                    continue
                if not _free(box, taken, margin=6):
                    continue
                paste(sigma0, y0, x0, wake, "mul")
                paste(bright, y0, x0, hull_add, "max")
                obj = TruthObject(
                    "ship", box, heading_deg=round(heading, 2), length_m=round(length * PIXEL_SIZE_M, 1)
                )
            else:
                side = int(rng.integers(PLATFORM_SIDE_PX[0], PLATFORM_SIDE_PX[1] + 1))
                add, mask, half = platform_patch(side, float(rng.uniform(10.0, 50.0)), rng)
                y0, x0 = cy - half - side // 2, cx - half - side // 2
                box = _mask_box(mask, y0, x0)
                if box is None or box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
                    continue
                if not _free(box, taken, margin=6):
                    continue
                paste(bright, y0, x0, add, "max")
                obj = TruthObject("platform", box)
            taken.append(box)
            objects.append(obj)
            break

    scene = np.maximum(sigma0, bright)
    bands = []
    for b in range(config.bands):
        gain = 1.0 if b == 0 else float(rng.uniform(0.2, 0.6))  # e.g. VV, then cross-pol bands
        bands.append(scene * gain * speckle(rng, (h, w)))
    image = np.clip(np.stack(bands) * DN_PER_SIGMA0, 0, 65535).astype(np.uint16)
    objects.sort(key=lambda o: (o.box_px[1], o.box_px[0]))
    mask = np.where(land, 1, np.where(slick, 2, 0)).astype(np.uint8)
    return SceneLayers(image, objects, float(land.mean()), mask, scene.astype(np.float32), tuple(slicks))


# ---------------------------------------------------------------------------------------------
# Georeferencing and I/O
# ---------------------------------------------------------------------------------------------


def scene_transform(seed: int, width_px: int, height_px: int) -> Any:
    """A north-up 10 m grid in UTM 31N somewhere in the southern North Sea, fixed by the seed."""
    from rasterio.transform import Affine

    rng = np.random.default_rng([seed, 7919])
    west_m = 450_000.0 + float(rng.integers(0, 200)) * 1000.0
    north_m = 5_750_000.0 + float(rng.integers(0, 300)) * 1000.0
    return Affine(PIXEL_SIZE_M, 0.0, west_m, 0.0, -PIXEL_SIZE_M, north_m)


def generate_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """The scene for `seed` (same seed and config: the same pixels and truth, bit for bit)."""
    config = config or SceneConfig()
    image, objects, land_fraction, mask = draw_scene_with_mask(seed, config)
    return Scene(
        seed,
        image,
        objects,
        scene_transform(seed, config.width_px, config.height_px),
        land_fraction=land_fraction,
        mask=mask,
    )


def box_px_to_map_m(
    transform: Any, box_px: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    """Pixel-edge box -> map box [x_min_m, y_min_m, x_max_m, y_max_m] in the scene CRS."""
    x1, y1, x2, y2 = box_px
    xa, ya = transform @ (x1, y1)
    xb, yb = transform @ (x2, y2)
    return (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))


def truth_geojson(scene: Scene) -> dict[str, Any]:
    """Ground truth as an RFC 7946 FeatureCollection (lon/lat polygons of the pixel boxes)."""
    from rasterio.warp import transform as warp

    features = []
    for i, obj in enumerate(scene.objects):
        x1, y1, x2, y2 = obj.box_px
        corners_px = [(x1, y1), (x1, y2), (x2, y2), (x2, y1), (x1, y1)]  # counter-clockwise on the map
        xs_m, ys_m = zip(*(scene.transform @ c for c in corners_px), strict=True)
        lons, lats = warp(scene.crs, "EPSG:4326", list(xs_m), list(ys_m))
        props: dict[str, Any] = {
            "id": i,
            "class": obj.class_name,
            "class_id": obj.class_id,
            "pixel_box": list(obj.box_px),
            "map_box": [round(v, 3) for v in box_px_to_map_m(scene.transform, obj.box_px)],
            "map_crs": scene.crs,
        }
        if obj.heading_deg is not None:
            props["heading_deg"] = obj.heading_deg
            props["length_m"] = obj.length_m
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [[round(lo, 7), round(la, 7)] for lo, la in zip(lons, lats, strict=True)]
                    ],
                },
                "properties": props,
            }
        )
    bands, height, width = scene.image.shape
    return {
        "type": "FeatureCollection",
        "features": features,
        "groundwatch": {  # foreign member (RFC 7946 section 6.1): how to relate pixels and map
            "seed": scene.seed,
            "crs": scene.crs,
            "transform": list(scene.transform)[:6],
            "width_px": width,
            "height_px": height,
            "bands": bands,
            "classes": list(CLASSES),
        },
    }


def write_scene(scene: Scene, out_dir: Path, name: str | None = None) -> tuple[Path, Path]:
    """Write `<name>.tif` (tiled, deflate GeoTIFF) and `<name>.geojson`; return both paths."""
    import rasterio

    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or f"scene-{scene.seed:06d}"
    tif, geojson = out_dir / f"{name}.tif", out_dir / f"{name}.geojson"
    bands, height, width = scene.image.shape
    tiled = height >= 256 and width >= 256
    profile: dict[str, Any] = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=bands,
        dtype="uint16",
        crs=scene.crs,
        transform=scene.transform,
        compress="deflate",
    )
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(scene.image)
        dst.update_tags(seed=str(scene.seed), classes=",".join(CLASSES))
    geojson.write_text(json.dumps(truth_geojson(scene)))
    return tif, geojson


SAMPLE_SEED_BASE = 700_000  # neither training (1,000,000+) nor the evaluation seeds (1..)


def sample_tiles(count: int, tile_px: int = 512, bands: int = 1, dtype: str = "uint16") -> np.ndarray:
    """`count` deterministic tiles [N, C, S, S] with 3 ships and 2 platforms each (seeds from
    700,000): what `groundwatch load --compare-samples` compares a variant with its source on."""
    out = np.empty((count, bands, tile_px, tile_px), dtype=np.dtype(dtype))
    config = SceneConfig(width_px=tile_px, height_px=tile_px, bands=bands, n_ships=3, n_platforms=2)
    for i in range(count):
        image, _, _ = draw_scene(SAMPLE_SEED_BASE + i, config)
        if out.dtype == np.uint8:
            image = np.clip(image, 0, 255)
        out[i] = image.astype(out.dtype)
    return out
