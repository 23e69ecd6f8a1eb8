"""Synthetic industrial-inspection data set: machined parts on a conveyor, four classes.

Every image is a 96x96 RGB picture of one machined part (a round flange with a centre bore or a
rounded square plate, each with four bolt holes) lying on a dark conveyor belt. Pose (rotation,
translation, scale), lighting gradient, material shade, blur and sensor noise are random. The
class decides the defect:

- ``ok``: no defect (dust specks, oil stains and machining marks appear in every class);
- ``scratch``: one or two long, smooth, thin lines across the surface, bright or dark;
- ``crack``: a short, jagged, dark line with branches that starts at a hole or the rim;
- ``missing_hole``: one bolt hole was never drilled (sometimes a faint spot-face mark remains).

Shapes are drawn with signed distance fields (anti-aliased edges), defects with anti-aliased
OpenCV lines. Each image has its own random generator seeded by
``(seed, split, index)``, so any image can be regenerated alone and the output depends only on
the seed (and on numpy/OpenCV arithmetic, which is stable for a given version). Only numpy and
OpenCV are needed: no torch.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

LABELS: Final = ("ok", "scratch", "crack", "missing_hole")
DATASET_ID: Final = "synthetic-inspection-v1"
SIZE: Final = 96
# Drawing scale: 1 draws at 96x96 directly (edges are anti-aliased analytically); 2 draws at
# 192x192 and reduces with area averaging (4x slower, marginally smoother lines). Pixel sizes
# below are given for the 192x192 canvas and scaled by _K.
_SS: Final = 1
_S: Final = SIZE * _SS
_K: Final = _SS / 2
# Split codes go into each image's seed so the splits never share an image.
SPLITS: Final = {"train": 0, "val": 1, "reference": 2, "calibration": 3}

FloatImage = npt.NDArray[np.float32]
Rng = np.random.Generator


def image_rng(seed: int, split: str, index: int) -> Rng:
    """Return the random generator of one image (independent of every other image)."""
    return np.random.default_rng([seed, SPLITS[split], index])


def label_of(index: int) -> int:
    """Return the class of image ``index`` of any split: classes cycle, so splits are balanced."""
    return index % len(LABELS)


def render(seed: int, split: str, index: int) -> npt.NDArray[np.uint8]:
    """Render image ``index`` of ``split``: uint8 [96, 96, 3] RGB of class label_of(index)."""
    return _render(image_rng(seed, split, index), label_of(index))


def make_split(seed: int, split: str, count: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render images ``start..start+count`` of a split: (uint8 [N,96,96,3] RGB, int64 [N])."""
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    for k in range(count):
        images[k] = render(seed, split, start + k)
        labels[k] = label_of(start + k)
    return images, labels


# --- geometry -----------------------------------------------------------------------------------


def _pixel_grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of the supersampled canvas (float64, x and y)."""
    ys, xs = np.mgrid[0:_S, 0:_S].astype(np.float64) + 0.5
    return xs, ys


def _part_sdf(
    ux: np.ndarray,
    uy: np.ndarray,
    shape: str,
    radius: float,
    holes: list[tuple[float, float, float]],
    bore: float,
) -> np.ndarray:
    """Signed distance (part units, negative inside metal) of the part with its holes."""
    d: np.ndarray
    if shape == "flange":
        d = np.hypot(ux, uy) - radius
    else:  # rounded square plate
        half, corner = 0.86 * radius, 0.22 * radius
        qx = np.abs(ux) - (half - corner)
        qy = np.abs(uy) - (half - corner)
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        d = outside + np.minimum(np.maximum(qx, qy), 0.0) - corner
    for hx, hy, hr in holes:
        d = np.maximum(d, hr - np.hypot(ux - hx, uy - hy))
    if bore > 0:
        d = np.maximum(d, bore - np.hypot(ux, uy))
    return d


def _smooth_noise(rng: Rng, cells: int, amplitude: float) -> np.ndarray:
    """Low-frequency noise field over the canvas (bicubic upsampling of a coarse grid)."""
    import cv2

    coarse = rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32)
    field: np.ndarray = cv2.resize(coarse, (_S, _S), interpolation=cv2.INTER_CUBIC)
    return field * np.float32(amplitude)


def _to_canvas(points: np.ndarray, pose: tuple[float, float, float, float]) -> np.ndarray:
    """Map part-unit points [N,2] to canvas pixels with pose (angle, scale, cx, cy)."""
    angle, scale, cx, cy = pose
    c, s = math.cos(angle), math.sin(angle)
    x = points[:, 0] * c - points[:, 1] * s
    y = points[:, 0] * s + points[:, 1] * c
    return np.stack([x * scale + cx, y * scale + cy], axis=1)


def _px(width_at_192: int) -> int:
    """A line width given for the 192x192 canvas, in pixels of the drawing canvas (>= 1)."""
    return max(1, int(width_at_192 * _K))


def _draw_polyline(mask: np.ndarray, points: np.ndarray, thickness: int) -> None:
    """Draw an anti-aliased polyline (canvas pixels, float) into a float32 mask."""
    import cv2

    shift = 4  # sub-pixel precision: coordinates in 1/16 px
    pts = np.round(points * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(mask, [pts], False, 1.0, thickness, cv2.LINE_AA, shift)


# --- defects ------------------------------------------------------------------------------------


def _scratch(rng: Rng, radius: float) -> list[np.ndarray]:
    """One or two long, gently curved lines in part units."""
    length = rng.uniform(0.7, 1.3) * radius
    centre = rng.uniform(-0.35, 0.35, size=2) * radius
    theta = rng.uniform(0, math.pi)
    direction = np.array([math.cos(theta), math.sin(theta)])
    normal = np.array([-direction[1], direction[0]])
    bow = rng.uniform(-0.12, 0.12) * length
    t = np.linspace(-0.5, 0.5, 24)[:, None]
    line = centre + t * length * direction + (1 - 4 * t**2) * bow * normal
    lines = [line]
    if rng.random() < 0.35:  # a parallel companion scratch, as from one dragged burr
        lines.append(line[4:-3] + normal * rng.uniform(2.5, 5.0) * rng.choice([-1.0, 1.0]))
    return lines


def _crack(
    rng: Rng, radius: float, shape: str, holes: list[tuple[float, float, float]]
) -> list[np.ndarray]:
    """A jagged random walk (with an optional branch) from a hole edge or the rim, part units."""
    if holes and rng.random() < 0.65:
        hx, hy, hr = holes[int(rng.integers(len(holes)))]
        phi = rng.uniform(0, 2 * math.pi)
        start = np.array([hx, hy]) + (hr + 0.5) * np.array([math.cos(phi), math.sin(phi)])
        heading = phi + rng.uniform(-0.5, 0.5)  # cracks run away from the stress raiser
    else:
        phi = rng.uniform(0, 2 * math.pi)
        rim = radius if shape == "flange" else 0.84 * radius
        start = (rim - 0.5) * np.array([math.cos(phi), math.sin(phi)])
        heading = phi + math.pi + rng.uniform(-0.6, 0.6)  # inwards from the rim
    walks = [_walk(rng, start, heading, rng.uniform(0.32, 0.6) * radius)]
    if rng.random() < 0.6:
        trunk = walks[0]
        fork = trunk[int(rng.integers(len(trunk) // 3, max(len(trunk) // 3 + 1, len(trunk) - 1)))]
        branch_heading = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.1)
        walks.append(_walk(rng, fork, branch_heading, rng.uniform(0.1, 0.25) * radius))
    return walks


def _walk(rng: Rng, start: np.ndarray, heading: float, length: float) -> np.ndarray:
    """Jagged path: short segments whose direction jitters around a slowly drifting heading."""
    points = [start]
    travelled = 0.0
    while travelled < length:
        step = rng.uniform(2.0, 5.0)
        heading += rng.normal(0.0, 0.18)
        jag = heading + rng.normal(0.0, 0.55)
        points.append(points[-1] + step * np.array([math.cos(jag), math.sin(jag)]))
        travelled += step
    return np.array(points)


# --- the image ----------------------------------------------------------------------------------


# One linear recipe on purpose: the order of the random draws below *is* the data set.
def _render(rng: Rng, label: int) -> npt.NDArray[np.uint8]:  # noqa: PLR0912
    """Draw one part with the defect of ``label`` and camera effects; uint8 RGB [96,96,3]."""
    import cv2

    xs, ys = _pixel_grid()
    kind = LABELS[label]

    # Pose and geometry (part units = canvas pixels at scale 1).
    shape = "flange" if rng.random() < 0.5 else "plate"
    radius = 60.0
    scale = rng.uniform(0.78, 1.08) * _K
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = _S / 2 + rng.uniform(-14, 14, size=2) * _K
    pose = (angle, scale, cx, cy)
    hole_r = rng.uniform(0.09, 0.13) * radius
    if shape == "flange":
        ring = 0.66 * radius
        holes = [
            (ring * math.cos(k * math.pi / 2), ring * math.sin(k * math.pi / 2), hole_r)
            for k in range(4)
        ]
        bore = rng.uniform(0.24, 0.32) * radius
    else:
        pitch = 0.58 * radius
        holes = [(sx * pitch, sy * pitch, hole_r) for sx in (-1, 1) for sy in (-1, 1)]
        bore = rng.uniform(0.0, 0.22) * radius if rng.random() < 0.5 else 0.0
    drilled = list(holes)
    missing: tuple[float, float, float] | None = None
    if kind == "missing_hole":
        missing = drilled.pop(int(rng.integers(len(drilled))))

    # Canvas pixels -> part units.
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = (xs - cx) / scale, (ys - cy) / scale
    ux, uy = dx * ca + dy * sa, -dx * sa + dy * ca
    sdf_px = _part_sdf(ux, uy, shape, radius, drilled, bore) * scale
    alpha = np.clip(0.5 - sdf_px, 0.0, 1.0).astype(np.float32)

    # Light: a direction for the chamfer shading, shadow offset and the illumination gradient.
    light = rng.uniform(0, 2 * math.pi)
    lx, ly = math.cos(light), math.sin(light)

    # Conveyor belt background with the part's soft shadow.
    belt = rng.uniform(30, 85)
    background = np.full((_S, _S, 3), belt, dtype=np.float32)
    background += rng.uniform(-6, 6, size=3).astype(np.float32)
    background += _smooth_noise(rng, 10, rng.uniform(3, 9))[..., None]
    weave = np.sin(
        (xs * math.cos(light * 3) + ys * math.sin(light * 3)) * rng.uniform(0.4, 0.7) / _K
    )
    background += (weave * rng.uniform(0, 3)).astype(np.float32)[..., None]
    offset = rng.uniform(2, 7) * _K
    shift = np.array([[1, 0, -lx * offset], [0, 1, -ly * offset]], dtype=np.float32)
    shadow = cv2.warpAffine(alpha, shift, (_S, _S), borderMode=cv2.BORDER_CONSTANT)
    shadow = cv2.GaussianBlur(shadow, (0, 0), rng.uniform(2, 5) * _K)
    background *= (1.0 - rng.uniform(0.3, 0.6) * shadow)[..., None]

    # Metal: base shade, turning or milling marks, chamfer shading at every edge.
    metal_level = rng.uniform(110, 180)
    metal = np.full((_S, _S, 3), metal_level, dtype=np.float32)
    metal += rng.uniform(-7, 7, size=3).astype(np.float32)
    marks = rng.normal(0.0, 1.0, size=256)
    coordinate = np.hypot(ux, uy) if shape == "flange" else uy + radius
    texture = np.interp(coordinate * rng.uniform(1.5, 2.5), np.arange(256), marks, period=256)
    metal += (texture * rng.uniform(2, 6)).astype(np.float32)[..., None]
    metal += _smooth_noise(rng, 6, rng.uniform(2, 7))[..., None]
    gy, gx = np.gradient(sdf_px)
    norm = np.hypot(gx, gy) + 1e-6
    bevel = np.clip(1.0 - np.abs(sdf_px + 2.0 * _K) / (2.0 * _K), 0.0, 1.0)
    chamfer = bevel * (gx * lx + gy * ly) / norm * rng.uniform(25, 50)
    metal += chamfer.astype(np.float32)[..., None]

    # Surface features, drawn in canvas pixels.
    surface = np.zeros((_S, _S), dtype=np.float32)
    if missing is not None and rng.random() < 0.5:  # faint spot-face where the hole should be
        centre = _to_canvas(np.array([missing[:2]]), pose)[0]
        dist = np.hypot(xs - centre[0], ys - centre[1]) / (missing[2] * scale)
        ring = np.exp(-((dist - 1.0) ** 2) / 0.03) * rng.uniform(-14, -6)
        surface += ring.astype(np.float32)
    if rng.random() < 0.35:  # oil stain
        stain = np.clip(_smooth_noise(rng, 5, 1.0) - 0.6, 0, None)
        surface -= stain * np.float32(rng.uniform(10, 25))
    for _ in range(int(rng.integers(0, 4))):  # dust specks (every class)
        speck = np.zeros((_S, _S), dtype=np.float32)
        p = rng.uniform(0.15 * _S, 0.85 * _S, size=2)
        cv2.circle(
            speck,
            (round(p[0] * 16), round(p[1] * 16)),
            round(16 * _K * int(rng.integers(1, 3))),
            1.0,
            -1,
            cv2.LINE_AA,
            4,
        )
        surface += speck * np.float32(rng.choice([-1.0, 1.0]) * rng.uniform(15, 35))
    if rng.random() < 0.3:  # a short, faint tool mark: not a defect, teaches "short" != scratch
        mark = np.zeros((_S, _S), dtype=np.float32)
        p = rng.uniform(-0.5, 0.5, size=2) * radius
        t = rng.uniform(0, math.pi)
        seg = np.array([p, p + rng.uniform(5, 12) * np.array([math.cos(t), math.sin(t)])])
        _draw_polyline(mark, _to_canvas(seg, pose), _px(2))
        surface += mark * np.float32(rng.uniform(-14, 14))

    if kind == "scratch":
        line_mask = np.zeros((_S, _S), dtype=np.float32)
        thickness = _px(int(rng.integers(2, 4)))
        for line in _scratch(rng, radius):
            _draw_polyline(line_mask, _to_canvas(line, pose), thickness)
        # A scratch catches the light on dull metal and looks dark on bright metal.
        sign = 1.0 if metal_level < 150 and rng.random() < 0.7 else -1.0
        surface += np.minimum(line_mask, 1.0) * np.float32(sign * rng.uniform(50, 85))
    elif kind == "crack":
        crack_mask = np.zeros((_S, _S), dtype=np.float32)
        for k, walk in enumerate(_crack(rng, radius, shape, drilled)):
            _draw_polyline(crack_mask, _to_canvas(walk, pose), _px(4 if k == 0 else 2))
        surface -= np.minimum(crack_mask, 1.0) * np.float32(rng.uniform(60, 100))

    metal += surface[..., None]
    image = background * (1.0 - alpha[..., None]) + metal * alpha[..., None]

    # Illumination: global gain times a linear gradient in a random direction.
    gradient_dir = rng.uniform(0, 2 * math.pi)
    ramp = ((xs - _S / 2) * math.cos(gradient_dir) + (ys - _S / 2) * math.sin(gradient_dir)) / _S
    # Kept below saturation: a clipped highlight would erase a defect and make a label wrong.
    gain = rng.uniform(0.7, 1.05) * (1.0 + rng.uniform(0.0, 0.5) * ramp)
    image *= gain.astype(np.float32)[..., None]

    # Camera: reduce to 96x96, optics blur, sensor noise (read noise + shot noise), quantise.
    if _SS != 1:
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    sigma = rng.uniform(0.0, 0.9)
    if sigma > 0.25:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    read = rng.uniform(1.0, 4.0)
    noise = rng.normal(0.0, 1.0, size=image.shape).astype(np.float32)
    image = image + noise * np.sqrt(np.float32(read**2) + 0.02 * np.clip(image, 0, None))
    out: npt.NDArray[np.uint8] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out
