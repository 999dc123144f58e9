"""Deterministic generator of the bundled demo data set: procedurally drawn doves, annotated as labelme 5 JSON.

    .venv/bin/python -m demo_data.doves --out data/raw --count 124 --seed 0

Each sample depends only on (seed, index), so any subset can be regenerated and compared byte for byte.
For that, per-pixel work uses only numpy's exactly rounded operations (+ - * / sqrt, no SIMD-dispatched
transcendentals), angles go through the scalar `math` module, and noise is upsampled with Pillow's integer
resampler; JPEG bytes then depend on the installed Pillow (libjpeg-turbo) alone.

How the annotation matches the pixels: a bird is built from polygon parts (ellipses as 48-gons). Its visible
region (its silhouette minus the foreground objects and the doves in front of it) is traced into polygons
(cv2.findContours, then approxPolyDP at 0.8 px). Gaps that doves enclose get `_background_` polygons written
after every `dove` polygon (labelme paints later shapes over earlier ones). The labelme-style raster of the
shape list is then the very mask through which dove pixels are composited onto the scene, so annotation and
drawn doves agree pixel for pixel, and the traced polygons stay within a pixel of the geometric silhouettes.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

DEFAULT_SEED = 0
DEFAULT_COUNT = 124
LABELME_VERSION = "5.5.0"
MIN_SIDE, MAX_SIDE = 240, 480
# Some files keep their pixels rotated and carry an EXIF Orientation tag, as phone photos do (index -> tag).
EXIF_ORIENTATION = {17: 6, 58: 8, 101: 3}
# Pillow transpose that turns the oriented picture (what labelme shows) into the stored pixels.
STORE_TRANSPOSE = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
CONTOUR_EPSILON_PX = 0.8  # approxPolyDP tolerance when tracing visible dove regions
MIN_REGION_PX = 30  # smaller visible dove fragments are neither annotated nor drawn
MIN_HOLE_PX = 10  # smaller gaps enclosed by doves are painted as dove


# ----------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Frame:
    """An ellipse (centre, radii, angle in radians): the shading body of a part and its pattern coordinates."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float = 0.0

    def to_uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates normalised to the ellipse: u along its major axis, v across, both -1..1 inside."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.cx, y - self.cy
        return (dx * c + dy * s) / self.rx, (dy * c - dx * s) / self.ry

    def polygon(self, n: int = 48) -> np.ndarray:
        return ellipse(self.cx, self.cy, self.rx, self.ry, self.angle, n)


def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 48) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    points = []
    for k in range(n):
        t = 2.0 * math.pi * k / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        points.append((cx + x * c - y * s, cy + x * s + y * c))
    return np.array(points)


def blob(
    rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, angle: float, roughness: float, n: int = 40
) -> np.ndarray:
    """An irregular closed outline (stone, bag, bread): an ellipse with a few random low harmonics."""
    harmonics = [(k, rng.uniform(-roughness, roughness) / k, rng.uniform(0, 2 * math.pi)) for k in range(2, 6)]
    c, s = math.cos(angle), math.sin(angle)
    points = []
    for i in range(n):
        t = 2.0 * math.pi * i / n
        r = 1.0 + sum(a * math.cos(k * t + phase) for k, a, phase in harmonics)
        x, y = rx * r * math.cos(t), ry * r * math.sin(t)
        points.append((cx + x * c - y * s, cy + x * s + y * c))
    return np.array(points)


def chaikin(points, iterations: int = 2) -> np.ndarray:
    """Round the corners of a closed polygon (corner cutting)."""
    points = np.asarray(points, dtype=np.float64)
    for _ in range(iterations):
        following = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * following, 0.25 * points + 0.75 * following], axis=1)
        points = points.reshape(-1, 2)
    return points


def along(points_uv, origin, angle: float, length: float, width: float) -> np.ndarray:
    """Place an outline given as (u along, v across) at `origin`, pointing at `angle`, scaled by length/width."""
    uv = np.asarray(points_uv, dtype=np.float64)
    c, s = math.cos(angle), math.sin(angle)
    u, v = uv[:, 0] * length, uv[:, 1] * width
    return np.stack([origin[0] + u * c - v * s, origin[1] + u * s + v * c], axis=1)


def polygon_mask(points: np.ndarray, h: int, w: int, offset=(0, 0)) -> np.ndarray:
    """Fill a polygon as labelme does (Pillow polygon, outline and fill), in a w x h window at `offset`."""
    canvas = Image.new("L", (w, h), 0)
    xy = [(float(x) - offset[0], float(y) - offset[1]) for x, y in points]
    ImageDraw.Draw(canvas).polygon(xy, outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)


def rasterise_shapes(shapes: list[dict], h: int, w: int) -> np.ndarray:
    """The dove mask a labelme shape list means: polygons painted in order, `dove` on, anything else off."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        value = 1 if shape["label"] == "dove" else 0
        draw.polygon([(float(x), float(y)) for x, y in shape["points"]], outline=value, fill=value)
    return np.asarray(canvas, dtype=bool)


def bbox_slices(mask: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    h, w = mask.shape
    return (
        slice(max(0, ys.min() - pad), min(h, ys.max() + pad + 1)),
        slice(max(0, xs.min() - pad), min(w, xs.max() + pad + 1)),
    )


# ------------------------------------------------------------------------------------------- noise, shading
def smooth_noise(rng: np.random.Generator, h: int, w: int, cell_x: float, cell_y: float | None = None) -> np.ndarray:
    """Value noise in 0..1: random bytes on a coarse grid, upsampled by Pillow's integer bicubic resampler."""
    cell_y = cell_x if cell_y is None else cell_y
    if cell_x <= 1 and cell_y <= 1:
        return rng.integers(0, 256, size=(h, w), dtype=np.uint8) / 255.0
    grid_w, grid_h = int(w / cell_x) + 4, int(h / cell_y) + 4
    coarse = rng.integers(0, 256, size=(grid_h, grid_w), dtype=np.uint8)
    big = Image.fromarray(coarse, "L").resize((round(grid_w * cell_x), round(grid_h * cell_y)), Image.BICUBIC)
    top, left = round(cell_y), round(cell_x)
    return np.asarray(big, dtype=np.float64)[top : top + h, left : left + w] / 255.0


def fbm(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 3) -> np.ndarray:
    """Fractal noise in about 0..1: octaves of value noise, each half the cell and half the weight."""
    total, weight = np.zeros((h, w)), 0.0
    for octave in range(octaves):
        amplitude = 0.5**octave
        total += amplitude * smooth_noise(rng, h, w, max(1.0, cell / 2**octave))
        weight += amplitude
    return total / weight


def triangle_wave(x: np.ndarray) -> np.ndarray:
    """A periodic 0..0.5..0 ramp with period 1 (a sine's job, but exactly rounded everywhere)."""
    return np.abs(x - np.floor(x) - 0.5)


def sphere_shade(u: np.ndarray, v: np.ndarray, light, cylinder: bool = False) -> np.ndarray:
    """Lambert shading of an ellipsoid (or a cylinder along u) seen from the front, with a faint highlight."""
    if cylinder:
        u = np.zeros_like(u)
    r2 = u * u + v * v
    outside = r2 > 1.0
    norm = np.sqrt(np.where(outside, r2, 1.0))
    nx, ny = u / norm, v / norm
    nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
    d = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0)
    d2 = d * d
    d8 = d2 * d2 * d2 * d2
    return 0.42 + 0.62 * d + 0.12 * d8


def light_in_frame(light, angle: float, mirror: bool = False):
    """A light direction given in a parent frame, seen from a frame rotated by `angle` (and mirrored)."""
    c, s = math.cos(angle), math.sin(angle)
    lx, ly = light[0] * c + light[1] * s, light[1] * c - light[0] * s
    return (-lx if mirror else lx), ly, light[2]


def soft_alpha(mask: np.ndarray, radius: float) -> np.ndarray:
    blurred = Image.fromarray(mask.astype(np.uint8) * 255, "L").filter(ImageFilter.GaussianBlur(radius))
    return (np.asarray(blurred, dtype=np.float64) / 255.0)[..., None]


def smoothstep01(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def mix(a, b, t):
    return a + (np.asarray(b, dtype=np.float64) - a) * t


def paint_shaded(
    canvas: np.ndarray,
    mask: np.ndarray,
    frame: Frame,
    colour,
    light,
    rng: np.random.Generator,
    texture: float = 0.08,
    cylinder: bool = False,
    opacity: float = 1.0,
    soft: float = 0.7,
) -> None:
    """Paint a solid object through `mask` onto `canvas` (image coordinates): shaded colour, grain, soft edge."""
    window = bbox_slices(mask, pad=3)
    if window is None:
        return
    ys, xs = window
    gy, gx = np.mgrid[ys, xs].astype(np.float64)
    u, v = frame.to_uv(gx, gy)
    shade = sphere_shade(u, v, light_in_frame(light, frame.angle), cylinder)
    h, w = gx.shape
    grain = 1.0 + texture * (smooth_noise(rng, h, w, 1.5) - 0.5 + 0.8 * (smooth_noise(rng, h, w, 6) - 0.5))
    colour = np.asarray(colour, dtype=np.float64) * (shade * grain)[..., None]
    alpha = soft_alpha(mask[window], soft) * opacity
    canvas[window] = canvas[window] * (1.0 - alpha) + colour * alpha


def darken(canvas: np.ndarray, mask: np.ndarray, strength: float, blur: float) -> None:
    """A soft shadow: darken `canvas` under a blurred mask."""
    alpha = soft_alpha(mask, blur)
    canvas *= 1.0 - strength * alpha


# ------------------------------------------------------------------------------------------------- plumage
@dataclass(frozen=True)
class Plumage:
    name: str
    body: tuple
    head: tuple
    neck: tuple
    wing: tuple
    primaries: tuple
    tail: tuple
    beak: tuple
    iris: tuple
    legs: tuple
    breast: tuple | None = None
    neck_sheen: tuple | None = None  # a second neck colour (a pigeon's green/purple sheen)
    bars: tuple | None = None  # two dark wing bars (rock pigeon)
    spots: tuple | None = None  # dark wing spots (mourning dove)
    collar: tuple | None = None  # black half collar (collared dove)
    tail_band: tuple | None = None  # band at the tail's tip
    cere: tuple = (226, 222, 214)
    texture: float = 0.10


PLUMAGES = (
    Plumage(
        "grey",
        body=(140, 146, 160),
        head=(120, 126, 142),
        neck=(92, 134, 114),
        neck_sheen=(128, 98, 142),
        wing=(162, 167, 178),
        primaries=(88, 90, 100),
        bars=(36, 36, 42),
        tail=(128, 133, 146),
        tail_band=(48, 48, 54),
        beak=(58, 50, 50),
        iris=(218, 112, 40),
        legs=(196, 88, 92),
    ),
    Plumage(
        "dark grey",
        body=(104, 108, 120),
        head=(90, 94, 108),
        neck=(70, 104, 92),
        neck_sheen=(104, 78, 116),
        wing=(118, 122, 134),
        primaries=(62, 62, 70),
        spots=(42, 42, 48),
        tail=(96, 100, 112),
        tail_band=(38, 38, 42),
        beak=(50, 44, 44),
        iris=(210, 100, 40),
        legs=(190, 84, 88),
        texture=0.13,
    ),
    Plumage(
        "white",
        body=(234, 234, 230),
        head=(240, 240, 236),
        neck=(236, 236, 232),
        wing=(242, 242, 238),
        primaries=(214, 214, 218),
        tail=(232, 232, 229),
        beak=(214, 160, 150),
        iris=(64, 40, 36),
        legs=(214, 110, 116),
        cere=(236, 226, 224),
        texture=0.06,
    ),
    Plumage(
        "collared",
        body=(196, 178, 158),
        head=(206, 190, 174),
        neck=(200, 184, 166),
        breast=(204, 178, 168),
        collar=(36, 32, 32),
        wing=(182, 162, 142),
        primaries=(108, 98, 92),
        tail=(172, 154, 136),
        tail_band=(232, 228, 218),
        beak=(46, 40, 40),
        iris=(150, 40, 40),
        legs=(190, 100, 100),
    ),
    Plumage(
        "mourning",
        body=(176, 150, 124),
        head=(186, 162, 138),
        neck=(180, 156, 132),
        breast=(190, 160, 140),
        wing=(164, 140, 116),
        primaries=(102, 90, 84),
        spots=(58, 46, 40),
        tail=(150, 130, 110),
        tail_band=(52, 46, 44),
        beak=(46, 40, 40),
        iris=(40, 30, 30),
        legs=(186, 104, 100),
        texture=0.12,
    ),
)
PLUMAGE_WEIGHTS = (0.34, 0.14, 0.2, 0.18, 0.14)

# Wing outlines in (u along the wing, v across; +v is the leading edge).
FOLDED_WING = [
    (-0.04, 0.0),
    (0.0, 0.11),
    (0.14, 0.16),
    (0.34, 0.165),
    (0.55, 0.135),
    (0.75, 0.085),
    (0.92, 0.03),
    (1.0, 0.0),
    (0.9, -0.03),
    (0.7, -0.07),
    (0.5, -0.11),
    (0.3, -0.13),
    (0.12, -0.12),
    (0.02, -0.08),
]
SPREAD_WING = [
    (0.0, 0.10),
    (0.2, 0.14),
    (0.45, 0.135),
    (0.7, 0.09),
    (0.9, 0.04),
    (1.0, 0.0),
    (0.97, -0.05),
    (0.91, -0.03),
    (0.87, -0.10),
    (0.81, -0.07),
    (0.76, -0.14),
    (0.69, -0.11),
    (0.63, -0.18),
    (0.5, -0.2),
    (0.3, -0.2),
    (0.12, -0.16),
    (0.0, -0.08),
]


# ---------------------------------------------------------------------------------------------------- birds
@dataclass
class Part:
    name: str
    points: np.ndarray  # polygon in bird units (body length 1, facing +x, y down)
    frame: Frame  # shading ellipse in bird units


@dataclass
class Bird:
    parts: list[Part]
    plumage: Plumage
    pose: str
    wing_spread: bool
    spots: list[tuple[float, float, float]]  # (u, v, radius) of wing spots, in the wing's frame
    feet: tuple[float, float]  # where the bird stands, in bird units
    cx: float = 0.0  # placement: image position of the bird's origin,
    cy: float = 0.0  # pixels per bird unit, rotation (radians), mirror
    scale: float = 1.0
    angle: float = 0.0
    mirror: bool = False

    def to_image(self, points: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = -points[:, 0] if self.mirror else points[:, 0]
        y = points[:, 1]
        return np.stack([self.cx + self.scale * (x * c - y * s), self.cy + self.scale * (x * s + y * c)], axis=1)

    def to_local(self, gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = (gx - self.cx) / self.scale, (gy - self.cy) / self.scale
        x, y = dx * c + dy * s, dy * c - dx * s
        return (-x if self.mirror else x), y

    def outline_points(self) -> np.ndarray:
        return self.to_image(np.concatenate([part.points for part in self.parts]))


def make_bird(rng: np.random.Generator, pose: str) -> Bird:
    """A dove from polygon parts in bird units: body length 1, facing +x, y pointing down."""
    j = rng.uniform
    plumage = PLUMAGES[rng.choice(len(PLUMAGES), p=PLUMAGE_WEIGHTS)]
    flying = pose == "flying"
    body_ry = j(0.2, 0.23) if flying else j(0.23, 0.28) + (0.03 if pose == "sitting" else 0.0)
    body = Frame(0.0, 0.0, 0.5, body_ry, math.radians(j(-12, -4)))
    breast = Frame(0.2, -0.05, 0.3, body_ry - 0.02, math.radians(-25))
    head_r = j(0.12, 0.145)
    head_x, head_y, beak_deg = {
        "standing": (0.45, -0.38, j(0, 25)),
        "alert": (0.42, -0.47, j(-5, 15)),
        "pecking": (0.62, 0.1, j(65, 100)),
        "sitting": (0.43, -0.3, j(0, 25)),
        "flying": (0.6, -0.12, j(0, 15)),
        "wings_up": (0.45, -0.36, j(0, 25)),
    }[pose]
    head_x, head_y = head_x + j(-0.03, 0.03), head_y + j(-0.03, 0.03)
    head = Frame(head_x, head_y, head_r * 1.07, head_r, math.radians(j(-15, 15)))
    neck_base = (0.22, -0.1)
    neck_dx, neck_dy = head_x - neck_base[0], head_y - neck_base[1]
    neck_half = math.sqrt(neck_dx * neck_dx + neck_dy * neck_dy) / 2
    neck = Frame(
        (neck_base[0] + head_x) / 2, (neck_base[1] + head_y) / 2, neck_half + 0.09, 0.13, math.atan2(neck_dy, neck_dx)
    )

    beak_dir = math.radians(beak_deg)
    beak_len = j(0.1, 0.14)
    beak_points = along(
        [(0.0, -0.05), (0.55, -0.038), (1.0, 0.0), (0.55, 0.03), (0.0, 0.055)],
        (head_x + 0.75 * head_r * math.cos(beak_dir), head_y + 0.75 * head_r * math.sin(beak_dir)),
        beak_dir,
        head_r * 0.25 + beak_len,
        1.0,
    )
    beak = Frame(float(beak_points[:, 0].mean()), float(beak_points[:, 1].mean()), beak_len * 0.6, 0.04, beak_dir)
    cere_at = (head_x + 0.92 * head_r * math.cos(beak_dir - 0.35), head_y + 0.92 * head_r * math.sin(beak_dir - 0.35))
    cere = Frame(cere_at[0], cere_at[1], 0.04, 0.024, beak_dir)
    eye_x = head_x + 0.3 * head_r * math.cos(beak_dir) + 0.08 * head_r
    eye_y = head_y + 0.3 * head_r * math.sin(beak_dir) - 0.25 * head_r
    iris = Frame(eye_x, eye_y, 0.034, 0.034)
    pupil = Frame(eye_x, eye_y, 0.017, 0.017)

    tail_angle = math.pi + math.radians(j(-5, 8) if flying else j(-22, 4))
    tail_len, tail_end = (j(0.3, 0.38), j(0.17, 0.22)) if flying else (j(0.36, 0.46), j(0.1, 0.12))
    tail_base = (-0.36, 0.02)
    tail_points = along(
        [
            (0.0, -0.085),
            (1.0, -tail_end),
            (1.06, -tail_end / 2),
            (1.08, 0.0),
            (1.06, tail_end / 2),
            (1.0, tail_end),
            (0.0, 0.085),
        ],
        tail_base,
        tail_angle,
        tail_len,
        1.0,
    )
    tail = Frame(
        tail_base[0] + 0.5 * tail_len * math.cos(tail_angle),
        tail_base[1] + 0.5 * tail_len * math.sin(tail_angle),
        tail_len * 0.55,
        tail_end,
        tail_angle,
    )

    parts: list[Part] = []
    wing_spread = pose in ("flying", "wings_up")
    if wing_spread:
        if flying and rng.random() < 0.35:  # down-stroke: wings below the body, leading edge forward
            wing_angle, flip = math.radians(j(120, 155)), -1.0
        else:
            wing_angle, flip = -math.radians(j(100, 150)), 1.0
        wing_len = j(0.9, 1.1)
        far_angle = wing_angle + math.radians(j(12, 25)) * (1 if wing_angle < 0 else -1)
        far_origin = (0.15, -0.15)
        far_points = along(chaikin(SPREAD_WING, 1), far_origin, far_angle, wing_len * 0.85, 0.9 * flip)
        parts.append(Part("far_wing", far_points, _wing_frame(far_origin, far_angle, wing_len * 0.85)))
        wing_origin = (0.1, -0.1)
        wing_points = along(chaikin(SPREAD_WING, 1), wing_origin, wing_angle, wing_len, flip)
        wing = Part("wing", wing_points, _wing_frame(wing_origin, wing_angle, wing_len))
    else:
        wing_origin, wing_angle, wing_len = (0.2, -0.1), math.pi + math.radians(j(-10, -3)), j(0.76, 0.86)
        wing_points = along(chaikin(FOLDED_WING, 2), wing_origin, wing_angle, wing_len, 1.0)
        wing = Part("wing", wing_points, _wing_frame(wing_origin, wing_angle, wing_len))

    parts.append(Part("tail", tail_points, tail))
    feet = (0.0, body_ry + 0.02)
    if pose not in ("flying", "sitting"):
        leg_len = j(0.15, 0.2)
        for x_top in (0.07, -0.05):
            top = (x_top, body_ry * 0.7)
            leg = along([(0.0, -0.022), (1.0, -0.02), (1.0, 0.02), (0.0, 0.022)], top, math.radians(80), leg_len, 1.0)
            foot_at = (top[0] + leg_len * math.cos(math.radians(80)), top[1] + leg_len * math.sin(math.radians(80)))
            toes = along([(-0.3, -0.018), (1.0, -0.012), (1.0, 0.012), (-0.3, 0.018)], foot_at, 0.0, 0.08, 1.0)
            leg_frame = Frame(top[0], top[1] + leg_len / 2, leg_len / 2, 0.025, math.radians(80))
            parts.append(Part("leg", leg, leg_frame))
            parts.append(Part("leg", toes, leg_frame))
        feet = (0.0, body_ry * 0.7 + leg_len + 0.015)
    parts += [
        Part("body", body.polygon(), body),
        Part("breast", breast.polygon(), breast),
        Part("neck", neck.polygon(), neck),
        Part("head", head.polygon(), head),
        Part("beak", beak_points, beak),
        Part("cere", cere.polygon(24), cere),
        Part("iris", iris.polygon(24), iris),
        Part("pupil", pupil.polygon(16), pupil),
        wing,
    ]
    spots = [(j(-0.4, 0.4), j(-0.5, 0.6), j(0.04, 0.07)) for _ in range(rng.integers(4, 8))]
    return Bird(parts, plumage, pose, wing_spread, spots, feet)


def _wing_frame(origin, angle: float, length: float) -> Frame:
    return Frame(
        origin[0] + 0.5 * length * math.cos(angle),
        origin[1] + 0.5 * length * math.sin(angle),
        0.52 * length,
        0.17 * length,
        angle,
    )


def part_colour(
    bird: Bird, part: Part, lx: np.ndarray, ly: np.ndarray, light, grain: np.ndarray, blotch: np.ndarray
) -> np.ndarray:
    """Colour of one part over a window of bird-unit coordinates: base colour, shading, feather patterns."""
    p = bird.plumage
    u, v = part.frame.to_uv(lx, ly)
    shade = sphere_shade(u, v, light_in_frame(light, part.frame.angle), cylinder=part.name == "leg")
    name = part.name
    if name in ("wing", "far_wing"):
        along_wing = (u + 1.0) / 2.0  # 0 at the shoulder, 1 at the tip
        colour = mix(np.asarray(p.wing, float), p.primaries, smoothstep01((along_wing - 0.55) / 0.3)[..., None])
        if not bird.wing_spread and p.bars is not None:
            for centre in (0.4, 0.53):  # on the rear coverts, across the lower half of the folded wing
                bar = smoothstep01((0.03 - np.abs(along_wing - centre + 0.08 * v)) / 0.015) * (v < 0.2)
                colour = mix(colour, p.bars, bar[..., None])
        if p.spots is not None:
            for su, sv, sr in bird.spots:
                spot = ((u - su) / sr) ** 2 + ((v - sv) / (sr * 2.5)) ** 2 < 1.0
                colour = np.where(spot[..., None], np.asarray(p.spots, float), colour)
        if bird.wing_spread:  # dark trailing edge of the flight feathers
            colour = colour * (1.0 - 0.25 * smoothstep01((-v - 0.55) / 0.3))[..., None]
        # overlapping feather rows: faint darker scallops
        scallop = triangle_wave(along_wing * 7.0 + 0.6 * triangle_wave(v * 2.5))
        colour = colour * (1.0 - 0.1 * smoothstep01((0.12 - scallop) / 0.12))[..., None]
        if name == "far_wing":
            colour = colour * 0.78
    elif name == "tail":
        colour = np.broadcast_to(np.asarray(p.tail, float), u.shape + (3,))
        if p.tail_band is not None:
            colour = mix(colour, p.tail_band, smoothstep01((u - 0.55) / 0.2)[..., None])
        colour = colour * (1.0 - 0.06 * smoothstep01((0.1 - triangle_wave(v * 3.0)) / 0.1))[..., None]
    elif name == "neck":
        colour = np.broadcast_to(np.asarray(p.neck, float), u.shape + (3,))
        if p.neck_sheen is not None:
            colour = mix(colour, p.neck_sheen, np.clip(blotch * 2.5 + 0.5 + 0.4 * v, 0.0, 1.0)[..., None])
        colour = mix(colour, p.head, smoothstep01((u - 0.3) / 0.5)[..., None])
        colour = mix(colour, p.body, smoothstep01((-u - 0.3) / 0.5)[..., None])
        if p.collar is not None:
            collar = smoothstep01((0.06 - np.abs(u - 0.05 + 0.2 * v)) / 0.03) * smoothstep01((0.1 - v) / 0.3)
            colour = mix(colour, p.collar, collar[..., None])
    else:
        flat = {
            "body": p.body,
            "breast": p.breast or p.body,
            "head": p.head,
            "beak": p.beak,
            "cere": p.cere,
            "iris": p.iris,
            "pupil": (18, 16, 16),
            "leg": p.legs,
        }[name]
        colour = np.broadcast_to(np.asarray(flat, float), u.shape + (3,))
    texture = p.texture if name in ("body", "breast", "neck", "head", "wing", "far_wing", "tail") else 0.03
    return colour * (shade * (1.0 + texture * (grain + 0.8 * blotch)))[..., None]


def render_bird(bird: Bird, h: int, w: int, light, rng: np.random.Generator):
    """Draw one bird: returns its window (ys, xs), RGB there and its silhouette (union of its parts) there."""
    outline = bird.outline_points()
    x0, y0 = max(0, math.floor(outline[:, 0].min()) - 3), max(0, math.floor(outline[:, 1].min()) - 3)
    x1, y1 = min(w, math.ceil(outline[:, 0].max()) + 4), min(h, math.ceil(outline[:, 1].max()) + 4)
    if x1 <= x0 or y1 <= y0:
        return None
    bh, bw = y1 - y0, x1 - x0
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    lx, ly = bird.to_local(gx, gy)
    grain = smooth_noise(rng, bh, bw, 1.6) - 0.5
    blotch = smooth_noise(rng, bh, bw, max(2.0, bird.scale * 0.06)) - 0.5
    body = next(part for part in bird.parts if part.name == "body")
    local_light = light_in_frame(light, bird.angle, bird.mirror)
    rgb = part_colour(bird, body, lx, ly, local_light, grain, blotch)  # under every part's soft edge
    silhouette = np.zeros((bh, bw), dtype=bool)
    edge_blur = 0.5 + min(0.6, bird.scale / 400.0)
    for part in bird.parts:
        mask = polygon_mask(bird.to_image(part.points), bh, bw, offset=(x0, y0))
        window = bbox_slices(mask, pad=3)
        if window is None:
            continue
        colour = part_colour(bird, part, lx[window], ly[window], local_light, grain[window], blotch[window])
        alpha = soft_alpha(mask[window], edge_blur if part.name not in ("iris", "pupil") else 0.4)
        rgb[window] = rgb[window] * (1.0 - alpha) + colour * alpha
        silhouette |= mask
    return (slice(y0, y1), slice(x0, x1)), rgb, silhouette


# ---------------------------------------------------------------------------------------------- backgrounds
def jitter(rng: np.random.Generator, colour, amount: float = 12.0) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


def to_pil(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")


def from_pil(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def vertical_gradient(h: int, w: int, top, bottom) -> np.ndarray:
    t = (np.arange(h, dtype=np.float64) / max(1, h - 1))[:, None, None]
    return np.broadcast_to(
        np.asarray(top, float) + (np.asarray(bottom, float) - np.asarray(top, float)) * t, (h, w, 3)
    ).copy()


def bg_sky(rng, h, w):
    overcast = rng.random() < 0.25
    if overcast:
        top, bottom = jitter(rng, (172, 182, 198), 10), jitter(rng, (214, 218, 226), 8)
    else:
        top = np.array([rng.uniform(55, 110), rng.uniform(115, 160), rng.uniform(195, 235)])
        bottom = np.array([rng.uniform(165, 205), rng.uniform(195, 222), rng.uniform(228, 246)])
    sky = vertical_gradient(h, w, top, bottom)
    density_noise = fbm(rng, h, w, w / rng.uniform(2.5, 5), octaves=4)
    cover = rng.uniform(0.42, 0.6) if not overcast else rng.uniform(0.3, 0.45)
    density = np.clip((density_noise - cover) / rng.uniform(0.08, 0.2), 0, 1)[..., None]
    cloud = np.asarray((246, 247, 250), float) * (0.8 + 0.2 * fbm(rng, h, w, w / 8, 2))[..., None]
    sky = sky * (1 - density) + cloud * density
    perch = None
    image = to_pil(sky)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.35:  # a dark band at the bottom: rooftops or trees
        band_top = int(h * rng.uniform(0.72, 0.88))
        xs = np.linspace(0, w, 9)
        ys = band_top + rng.uniform(-0.06, 0.06, 9) * h
        colour = tuple(int(c) for c in jitter(rng, (58, 64, 60), 15))
        draw.polygon([(0, h)] + [(float(x), float(y)) for x, y in zip(xs, ys)] + [(w, h)], fill=colour)
        perch = float(ys.min())
    if rng.random() < 0.3:  # an overhead wire
        y_left, y_right = h * rng.uniform(0.45, 0.8), h * rng.uniform(0.45, 0.8)
        draw.line([(0, y_left), (w, y_right)], fill=(40, 40, 44), width=int(rng.integers(1, 3)))
    return from_pil(image), perch


def bg_grass(rng, h, w):
    base = np.array([rng.uniform(65, 110), rng.uniform(112, 150), rng.uniform(38, 70)])
    patches = fbm(rng, h, w, rng.uniform(40, 90))
    dry = np.asarray((150, 148, 84), float)
    grass = base * (0.75 + 0.5 * patches)[..., None]
    grass = mix(grass, dry, (np.clip(fbm(rng, h, w, 60) - 0.55, 0, 0.3) * rng.uniform(0.5, 2.0))[..., None])
    image = to_pil(grass)
    draw = ImageDraw.Draw(image)
    count = h * w // 22
    xs, ys = rng.uniform(0, w, count), rng.uniform(0, h, count)
    lengths = (2.5 + 6.0 * ys / h) * rng.uniform(0.6, 1.4, count)
    leans = rng.uniform(-0.5, 0.5, count)
    shades = rng.uniform(0.6, 1.35, count)
    for x, y, length, lean, shade in zip(xs, ys, lengths, leans, shades):
        colour = tuple(int(min(255, c * shade)) for c in base)
        draw.line([(x, y), (x + lean * length, y - length)], fill=colour, width=1)
    for _ in range(int(rng.integers(0, 12))):  # a few daisies
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1.5, 3)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(240, 240, 230))
        draw.ellipse([x - r / 3, y - r / 3, x + r / 3, y + r / 3], fill=(230, 190, 50))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.7)))
    return from_pil(image), None


def bg_pavement(rng, h, w):
    style = rng.choice(["slabs", "cobbles", "asphalt"], p=[0.45, 0.3, 0.25])
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    speckle = smooth_noise(rng, h, w, 1) - 0.5
    if style == "asphalt":
        base = jitter(rng, (92, 92, 94), 14)
        ground = base * (0.85 + 0.3 * fbm(rng, h, w, 50) + 0.22 * speckle)[..., None]
        if rng.random() < 0.6:  # a painted road marking, as white as a dove
            c, s = math.cos(rng.uniform(0, math.pi)), math.sin(rng.uniform(0, math.pi))
            offset = rng.uniform(0.2, 0.8) * (abs(c) * w + abs(s) * h)
            across = gx * s - gy * c + (c * w if c > 0 else 0.0) - offset
            width = rng.uniform(6, 16)
            stripe = (np.abs(across) < width)[..., None]
            paint = np.asarray((226, 226, 220), float) * (0.9 + 0.15 * speckle)[..., None]
            ground = np.where(stripe, paint, ground)
        return ground, None
    palette = [(168, 162, 152), (150, 84, 64), (190, 176, 146), (128, 128, 132)][rng.integers(0, 4)]
    base = jitter(rng, palette, 10)
    if style == "slabs":
        slab_w, slab_h, grout = rng.uniform(45, 120), rng.uniform(35, 90), rng.uniform(1.5, 3.5)
        row = np.floor(gy / slab_h)
        shifted = gx + (row % 2) * slab_w * (0.5 if rng.random() < 0.6 else 0.0)
        col = np.floor(shifted / slab_w)
        fx, fy = shifted - col * slab_w, gy - row * slab_h
        tile_tone = rng.uniform(0.88, 1.1, (int(h / slab_h) + 2, int((w + slab_w) / slab_w) + 2))
        tone = tile_tone[row.astype(int), col.astype(int)]
        joint = (fx < grout) | (fy < grout)
        ground = base * (tone * (0.85 + 0.3 * fbm(rng, h, w, 40)) + 0.16 * speckle)[..., None]
        ground = np.where(joint[..., None], ground * 0.55, ground)
    else:  # cobbles: rounded stones in a grid
        cell = rng.uniform(16, 30)
        row, col = np.floor(gy / cell), np.floor(gx / cell)
        fu = (gx - col * cell) / cell * 2 - 1
        fv = (gy - row * cell) / cell * 2 - 1
        r2 = np.maximum(fu * fu * fu * fu, fv * fv * fv * fv) * 0.6 + (fu * fu + fv * fv) * 0.25
        tones = rng.uniform(0.8, 1.15, (int(h / cell) + 2, int(w / cell) + 2))
        tone = tones[row.astype(int), col.astype(int)]
        shade = 0.75 + 0.35 * np.clip(1 - r2, 0, 1) - 0.15 * fv
        ground = base * (tone * shade + 0.16 * speckle)[..., None]
        ground = np.where(
            (r2 > 0.8)[..., None], np.asarray((96, 88, 76), float) * (0.8 + 0.3 * speckle)[..., None], ground
        )
    return ground, None


def bg_roof(rng, h, w):
    palette = [(184, 96, 68), (82, 88, 100), (126, 92, 72)][rng.choice(3, p=[0.5, 0.3, 0.2])]
    base = jitter(rng, palette, 10)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    row_h, tile_w = rng.uniform(14, 28), rng.uniform(16, 32)
    ridge = int(h * rng.uniform(0.12, 0.35)) if rng.random() < 0.45 else -1
    slope_y = gy - ridge + gx * rng.uniform(-0.12, 0.12)
    row = np.floor(slope_y / row_h)
    fy = (slope_y - row * row_h) / row_h
    shifted = gx + (row % 2) * tile_w / 2
    col = np.floor(shifted / tile_w)
    fx = (shifted - col * tile_w) / tile_w
    tones = rng.uniform(0.85, 1.12, (int((h + w) / row_h) + 4, int(w / tile_w) + 4))
    tone = tones[(row - row.min()).astype(int), col.astype(int)]
    shade = 0.72 + 0.38 * (1 - fy)
    if palette[0] > 150:  # clay tiles are curved: lit in the middle of each tile
        shade = shade * (0.75 + 0.5 * (0.5 - triangle_wave(fx - 0.5)))
    weathering = 0.9 + 0.2 * fbm(rng, h, w, 30)
    roof = base * (tone * shade * weathering + 0.1 * (smooth_noise(rng, h, w, 1) - 0.5))[..., None]
    roof = np.where(((fy > 0.9) | (fx < 0.04))[..., None], roof * 0.55, roof)
    moss = np.clip(fbm(rng, h, w, 25) - 0.6, 0, 1)[..., None] * rng.uniform(0, 2.5)
    roof = mix(roof, np.asarray((96, 110, 60), float), np.clip(moss, 0, 0.7))
    perch = None
    if ridge > 0:
        sky, _ = bg_sky(rng, h, w)
        roof = np.where((slope_y < 0)[..., None], sky, roof)
        perch = float(ridge)
    return roof, perch


def bg_clutter(rng, h, w):
    soil = jitter(rng, (134, 106, 78), 16)
    ground = soil * (0.75 + 0.45 * fbm(rng, h, w, 35) + 0.15 * (smooth_noise(rng, h, w, 1) - 0.5))[..., None]
    image = to_pil(ground)
    draw = ImageDraw.Draw(image)
    for _ in range(h * w // 260):  # gravel
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1.2, 3.5)
        tone = rng.uniform(90, 200)
        colour = tuple(int(tone * k) for k in jitter(rng, (1.0, 0.96, 0.9), 0.06))
        draw.ellipse([x - r, y - r * 0.8, x + r, y + r * 0.8], fill=colour)
    leaf_colours = [(200, 120, 40), (196, 168, 62), (140, 90, 50), (96, 122, 52), (168, 70, 40)]
    for _ in range(int(rng.integers(12, 40))):  # fallen leaves
        x, y, length = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 14)
        leaf = ellipse(x, y, length, length * 0.4, rng.uniform(0, math.pi), 16)
        colour = tuple(int(c) for c in jitter(rng, leaf_colours[rng.integers(0, 5)], 20))
        draw.polygon([tuple(p) for p in leaf], fill=colour)
    for _ in range(int(rng.integers(4, 14))):  # twigs
        x, y, length, angle = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(15, 50), rng.uniform(0, math.pi)
        draw.line(
            [(x, y), (x + length * math.cos(angle), y + length * math.sin(angle))],
            fill=(70, 50, 36),
            width=int(rng.integers(1, 4)),
        )
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.6)))
    return from_pil(image), None


def bg_wall(rng, h, w):
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    ledge_top = int(h * rng.uniform(0.5, 0.78))
    ledge_h = int(h * rng.uniform(0.05, 0.1))
    if rng.random() < 0.6:  # brick
        brick_w, brick_h, mortar = rng.uniform(36, 60), rng.uniform(13, 20), rng.uniform(1.5, 3)
        row = np.floor(gy / brick_h)
        shifted = gx + (row % 2) * brick_w / 2
        col = np.floor(shifted / brick_w)
        tones = rng.uniform(0.82, 1.12, (int(h / brick_h) + 2, int(w / brick_w) + 3))
        tone = tones[row.astype(int), col.astype(int)]
        brick = jitter(rng, (164, 84, 60), 14)
        wall = brick * (tone * (0.85 + 0.3 * fbm(rng, h, w, 20)) + 0.15 * (smooth_noise(rng, h, w, 1) - 0.5))[..., None]
        joint = ((gy - row * brick_h) < mortar) | ((shifted - col * brick_w) < mortar)
        wall = np.where(joint[..., None], jitter(rng, (186, 180, 170), 10) * 0.9, wall)
    else:  # rendered concrete, dove grey
        wall = jitter(rng, (160, 160, 156), 12) * (0.8 + 0.35 * fbm(rng, h, w, 45))[..., None]
    ledge = jitter(rng, (196, 192, 184), 12) * (0.9 + 0.2 * fbm(rng, h, w, 25))[..., None]
    ledge = ledge * np.where(gy < ledge_top + ledge_h * 0.35, 1.08, 0.85)[..., None]
    below = jitter(rng, (96, 92, 88), 12) * (0.8 + 0.3 * fbm(rng, h, w, 30))[..., None]
    image = np.where((gy < ledge_top)[..., None], wall, np.where((gy < ledge_top + ledge_h)[..., None], ledge, below))
    shadow = ((gy >= ledge_top + ledge_h) & (gy < ledge_top + ledge_h + 0.04 * h))[..., None]
    return np.where(shadow, image * 0.6, image), float(ledge_top)


BACKGROUNDS = {
    "sky": bg_sky,
    "grass": bg_grass,
    "pavement": bg_pavement,
    "roof": bg_roof,
    "clutter": bg_clutter,
    "wall": bg_wall,
}
BACKGROUND_WEIGHTS = (0.18, 0.2, 0.22, 0.14, 0.14, 0.12)


# --------------------------------------------------------------------------------- distractors, occluders
DOVE_TONES = [(150, 154, 164), (226, 226, 222), (182, 160, 138), (118, 120, 128), (200, 196, 188), (150, 128, 104)]


def paint_object(rng, canvas: np.ndarray, kind: str, cx: float, cy: float, size: float, light) -> np.ndarray:
    """Paint a dove-coloured but not dove-shaped object; returns its mask."""
    h, w = canvas.shape[:2]
    tone = jitter(rng, DOVE_TONES[rng.integers(0, len(DOVE_TONES))], 14)
    angle = rng.uniform(0, math.pi)
    if kind == "stone":
        rx, ry = size / 2, size / 2 * rng.uniform(0.5, 0.85)
        outline = blob(rng, cx, cy, rx, ry, angle, 0.12)
        mask = polygon_mask(outline, h, w)
        paint_shaded(canvas, mask, Frame(cx, cy, rx, ry, angle), tone, light, rng, texture=0.22)
    elif kind == "bag":  # a crumpled plastic bag: pale, translucent, with creases
        rx, ry = size / 2, size / 2 * rng.uniform(0.6, 0.9)
        outline = chaikin(blob(rng, cx, cy, rx, ry, angle, 0.3, n=14), 2)
        mask = polygon_mask(outline, h, w)
        bag_tone = jitter(rng, (228, 228, 226), 10)
        paint_shaded(
            canvas, mask, Frame(cx, cy, rx * 1.3, ry * 1.3, angle), bag_tone, light, rng, texture=0.12, opacity=0.9
        )
        creases = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(creases)
        for _ in range(int(rng.integers(3, 7))):
            x, y = cx + rng.uniform(-rx, rx) * 0.7, cy + rng.uniform(-ry, ry) * 0.7
            a, length = rng.uniform(0, math.pi), rng.uniform(0.3, 0.8) * size / 2
            draw.line([(x, y), (x + length * math.cos(a), y + length * math.sin(a))], fill=255, width=2)
        crease = (np.asarray(creases.filter(ImageFilter.GaussianBlur(1.0)), float) / 255.0 * mask)[..., None]
        canvas *= 1.0 - 0.3 * crease
    elif kind in ("bottle", "can"):  # a cylinder lying on the ground or standing
        length = size
        radius = size * (rng.uniform(0.14, 0.2) if kind == "bottle" else rng.uniform(0.28, 0.36))
        body_uv = [(-0.5, -1), (0.3, -1), (0.5, -0.7), (0.5, 0.7), (0.3, 1), (-0.5, 1)]
        if kind == "bottle":
            body_uv = [
                (-0.5, -1),
                (0.22, -1),
                (0.34, -0.45),
                (0.5, -0.42),
                (0.5, 0.42),
                (0.34, 0.45),
                (0.22, 1),
                (-0.5, 1),
            ]
        outline = along(chaikin(body_uv, 1), (cx, cy), angle, length, radius)
        mask = polygon_mask(outline, h, w)
        tint = jitter(rng, [(196, 200, 204), (120, 84, 52), (226, 226, 222), (150, 154, 160)][rng.integers(0, 4)], 10)
        paint_shaded(
            canvas,
            mask,
            Frame(cx, cy, length / 2, radius, angle),
            tint,
            light,
            rng,
            texture=0.05,
            cylinder=True,
            opacity=0.92,
        )
    else:  # "bread": a brown slice, or a crumpled paper ball
        rx, ry = size / 2, size / 2 * rng.uniform(0.7, 0.95)
        outline = chaikin(blob(rng, cx, cy, rx, ry, angle, 0.18, n=10), 2)
        mask = polygon_mask(outline, h, w)
        crust = jitter(rng, (176, 128, 78), 12) if rng.random() < 0.5 else tone
        paint_shaded(canvas, mask, Frame(cx, cy, rx * 1.4, ry * 1.4, angle), crust, light, rng, texture=0.18)
    return mask


def paint_occluder(rng, canvas: np.ndarray, target: Bird, light, airborne: bool) -> np.ndarray:
    """A foreground object across part of `target`: a post, a branch with leaves, a grass tuft or an object.

    Things that stand on the ground (tufts, bottles...) only hide doves that are on the ground too.
    """
    h, w = canvas.shape[:2]
    outline = target.outline_points()
    bx0, by0 = outline.min(axis=0)
    bx1, by1 = outline.max(axis=0)
    bw, bh = bx1 - bx0, by1 - by0
    if airborne:
        kind = rng.choice(["post", "branch"], p=[0.4, 0.6])
    else:
        kind = rng.choice(["post", "branch", "tuft", "object"], p=[0.25, 0.3, 0.2, 0.25])
    if kind == "post":
        x = rng.uniform(bx0 + 0.15 * bw, bx1 - 0.15 * bw)
        width = max(6.0, bw * rng.uniform(0.1, 0.22))
        lean = rng.uniform(-0.15, 0.15)
        top = -10.0 if rng.random() < 0.5 else by0 + rng.uniform(0.2, 0.5) * bh
        post = [
            (x - width / 2, top),
            (x + width / 2, top),
            (x + width / 2 + lean * h, h + 10),
            (x - width / 2 + lean * h, h + 10),
        ]
        mask = polygon_mask(np.array(post), h, w)
        colour = [(118, 84, 56), (56, 74, 58), (72, 72, 78)][rng.integers(0, 3)]
        frame = Frame(x + lean * h / 2, h / 2, h, width / 2, math.atan2(h, lean * h))
        paint_shaded(canvas, mask, frame, jitter(rng, colour, 10), light, rng, texture=0.15, cylinder=True)
        return mask
    if kind == "branch":
        angle = rng.uniform(-0.6, 0.6) + (math.pi / 2 if rng.random() < 0.3 else 0.0)
        through = (rng.uniform(bx0 + 0.25 * bw, bx1 - 0.25 * bw), rng.uniform(by0 + 0.25 * bh, by1 - 0.25 * bh))
        reach = w + h
        start = (through[0] - reach * math.cos(angle), through[1] - reach * math.sin(angle))
        end = (through[0] + reach * math.cos(angle), through[1] + reach * math.sin(angle))
        width = max(3, int(target.scale * rng.uniform(0.05, 0.09)))
        twig = Image.new("L", (w, h), 0)
        ImageDraw.Draw(twig).line([start, end], fill=1, width=width)
        mask = np.asarray(twig, dtype=bool)
        bark = jitter(rng, (92, 66, 46), 10)
        paint_shaded(
            canvas,
            mask,
            Frame(through[0], through[1], reach, width / 2, angle),
            bark,
            light,
            rng,
            texture=0.2,
            cylinder=True,
        )
        for _ in range(int(rng.integers(3, 8))):
            t = rng.uniform(-0.4, 0.4) * (bw + bh)
            side = 1 if rng.random() < 0.5 else -1
            leaf_angle = angle + side * rng.uniform(0.5, 1.1)
            length = target.scale * rng.uniform(0.12, 0.2)
            lx = through[0] + t * math.cos(angle) + length * math.cos(leaf_angle)
            ly = through[1] + t * math.sin(angle) + length * math.sin(leaf_angle)
            leaf = ellipse(lx, ly, length, length * 0.38, leaf_angle, 24)
            leaf_mask = polygon_mask(leaf, h, w)
            paint_shaded(
                canvas,
                leaf_mask,
                Frame(lx, ly, length, length * 0.38, leaf_angle),
                jitter(rng, (74, 120, 52), 18),
                light,
                rng,
                texture=0.1,
            )
            mask |= leaf_mask
        return mask
    if kind == "tuft":
        base_y = by1 + rng.uniform(0.0, 0.1) * bh
        tuft = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(tuft)
        for _ in range(int(rng.integers(14, 30))):
            x = rng.uniform(bx0 - 0.1 * bw, bx1 + 0.1 * bw)
            height = bh * rng.uniform(0.2, 0.5)
            half = max(1.5, target.scale * rng.uniform(0.02, 0.04))
            lean = rng.uniform(-0.4, 0.4) * height
            draw.polygon([(x - half, base_y), (x + half, base_y), (x + lean, base_y - height)], fill=1)
        mask = np.asarray(tuft, dtype=bool)
        green = jitter(rng, (84, 128, 50), 15)
        paint_shaded(canvas, mask, Frame((bx0 + bx1) / 2, base_y, bw, bh * 0.4, 0.0), green, light, rng, texture=0.3)
        return mask
    size = max(bw, bh) * rng.uniform(0.35, 0.6)
    kind_of_object = rng.choice(["stone", "bag", "bottle", "can", "bread"])
    cx = rng.uniform(bx0, bx1)
    cy = by1 - rng.uniform(0.05, 0.3) * bh
    return paint_object(rng, canvas, kind_of_object, cx, cy, size, light)


# --------------------------------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    """One generated picture (as labelme shows it, i.e. EXIF orientation applied) with its annotation."""

    index: int
    name: str
    rgb: np.ndarray  # HxWx3 uint8, before JPEG
    shapes: list[dict]  # labelme shapes
    drawn_mask: np.ndarray  # HxW bool: the pixels painted as dove
    silhouette_mask: np.ndarray  # HxW bool: union of the birds' visible geometric silhouettes
    background: str
    orientation: int  # EXIF orientation tag of the stored file (1 = none)
    quality: int
    stats: dict = field(default_factory=dict)


def pick_size(rng: np.random.Generator) -> tuple[int, int]:
    short = int(rng.integers(MIN_SIDE, 361))
    long = int(min(MAX_SIDE, round(short * rng.uniform(1.0, 1.6))))
    return (short, long) if rng.random() < 0.65 else (long, short)  # (h, w): mostly landscape


def pick_pose(rng: np.random.Generator, background: str) -> str:
    if background == "sky":
        poses, weights = ["flying", "standing", "alert", "sitting", "wings_up"], [0.55, 0.15, 0.1, 0.1, 0.1]
    else:
        poses = ["standing", "alert", "pecking", "sitting", "wings_up", "flying"]
        weights = [0.3, 0.15, 0.22, 0.15, 0.1, 0.08]
    return str(rng.choice(poses, p=weights))


def place_birds(
    rng: np.random.Generator, count: int, h: int, w: int, background: str, perch: float | None
) -> list[Bird]:
    short = min(h, w)
    span = {1: (0.5, 0.9), 2: (0.4, 0.7), 3: (0.33, 0.55)}.get(count, (0.3, 0.6))
    birds: list[Bird] = []
    for k in range(count):
        bird = make_bird(rng, pick_pose(rng, background))
        bird.scale = short * rng.uniform(*span) / 1.5
        bird.mirror = bool(rng.random() < 0.5)
        bird.angle = math.radians(rng.uniform(-30, 30) if bird.pose == "flying" else rng.uniform(-14, 14))
        bird.cx = bird.cy = 0.0
        local = bird.outline_points()
        lo, hi = local.min(axis=0), local.max(axis=0)
        size = hi - lo
        cut = rng.random() < 0.18  # let the image border cut this bird
        for _ in range(30):
            if cut:
                x = rng.uniform(-lo[0] - size[0] * 0.45, w - hi[0] + size[0] * 0.45)
                y = rng.uniform(-lo[1] - size[1] * 0.3, h - hi[1] + size[1] * 0.45)
            else:
                x = rng.uniform(-lo[0], max(-lo[0], w - hi[0]))
                y = rng.uniform(-lo[1], max(-lo[1], h - hi[1]))
            on_perch = perch is not None and bird.pose != "flying" and rng.random() < 0.7
            if on_perch:  # stand on the ledge / ridge / roofline
                foot = bird.to_image(np.array([bird.feet]))[0]
                y = perch - foot[1]
            if birds and k > 0 and rng.random() < 0.25:  # deliberately overlap the previous dove
                prev = birds[-1]
                x = prev.cx + rng.choice([-1, 1]) * size[0] * rng.uniform(0.3, 0.6)
                y = prev.cy + rng.uniform(-0.25, 0.25) * size[1] if not on_perch else y
                break
            box = (x + lo[0], y + lo[1], x + hi[0], y + hi[1])
            if all(_overlap(box, other) < 0.15 for other in birds):
                break
        bird.cx, bird.cy = float(x), float(y)
        birds.append(bird)
    return birds


def _overlap(box, other: Bird) -> float:
    points = other.outline_points()
    ox0, oy0 = points.min(axis=0)
    ox1, oy1 = points.max(axis=0)
    iw, ih = min(box[2], ox1) - max(box[0], ox0), min(box[3], oy1) - max(box[1], oy0)
    if iw <= 0 or ih <= 0:
        return 0.0
    area = min((box[2] - box[0]) * (box[3] - box[1]), (ox1 - ox0) * (oy1 - oy0))
    return float(iw * ih / area)


def trace_polygons(mask: np.ndarray, min_pixels: int) -> list[list[list[float]]]:
    """Outer outlines of a mask's regions as polygons through boundary pixel centres, lightly simplified."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for contour in contours:
        region = np.zeros(mask.shape, np.uint8)
        cv2.drawContours(region, [contour], -1, 1, thickness=-1)
        if int((region.astype(bool) & mask).sum()) < min_pixels:
            continue
        simplified = cv2.approxPolyDP(contour, CONTOUR_EPSILON_PX, True).reshape(-1, 2)
        if len(simplified) >= 3:
            polygons.append([[float(x), float(y)] for x, y in simplified])
    return polygons


def dove_shape(points, group_id) -> dict:
    return {
        "label": "dove",
        "points": points,
        "group_id": group_id,
        "description": "",
        "shape_type": "polygon",
        "flags": {},
        "mask": None,
    }


def annotate(silhouettes: list[np.ndarray], occluder: np.ndarray) -> tuple[list[dict], list[np.ndarray]]:
    """labelme shapes for the visible doves. `silhouettes` go from back to front.

    A dove's polygon covers what is visible of it, reaching 2 px under the doves in front, so neighbouring
    polygons leave no seam. Gaps the doves enclose (a twig across a bird) become `_background_` polygons,
    written last because labelme paints later shapes over earlier ones.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    shapes, visible = [], []
    group = 0
    for k, silhouette in enumerate(silhouettes):
        in_front = np.zeros_like(silhouette)
        for other in silhouettes[k + 1 :]:
            in_front |= other
        shrunk_front = cv2.erode(in_front.astype(np.uint8), kernel).astype(bool)
        region = silhouette & ~occluder & ~shrunk_front
        polygons = trace_polygons(region, MIN_REGION_PX)
        visible.append(silhouette & ~occluder & ~in_front)
        if not polygons:
            continue
        group += 1
        for polygon in polygons:
            shapes.append(dove_shape(polygon, group if len(polygons) > 1 else None))
    doves = rasterise_shapes(shapes, *occluder.shape)
    covered = np.zeros_like(occluder)
    for silhouette in silhouettes:
        covered |= silhouette
    gaps = doves & ~(covered & ~occluder)
    enclosed = _enclosed(gaps, doves)
    for polygon in trace_polygons(enclosed, MIN_HOLE_PX):
        shapes.append({**dove_shape(polygon, None), "label": "_background_"})
    return shapes, visible


def _enclosed(gaps: np.ndarray, doves: np.ndarray) -> np.ndarray:
    """Gap pixels that are not just a thin seam along a polygon's edge: real holes in the dove region."""
    opened = cv2.morphologyEx(gaps.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    return opened & doves


def spread_colours(rgb: np.ndarray, valid: np.ndarray, need: np.ndarray, steps: int = 3) -> np.ndarray:
    """Fill `need` pixels outside `valid` with the mean of valid neighbours, growing a few pixels."""
    rgb, valid = rgb.copy(), valid.copy()
    h, w = valid.shape
    for _ in range(steps):
        todo = need & ~valid
        if not todo.any():
            break
        padded_rgb = np.pad(rgb * valid[..., None], ((1, 1), (1, 1), (0, 0)))
        padded_valid = np.pad(valid.astype(np.float64), 1)
        total, count = np.zeros((h, w, 3)), np.zeros((h, w))
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                total += padded_rgb[dy : dy + h, dx : dx + w]
                count += padded_valid[dy : dy + h, dx : dx + w]
        grow = todo & (count > 0)
        rgb[grow] = total[grow] / count[grow][:, None]
        valid |= grow
    return rgb


def photo_finish(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Camera look: white balance and exposure, vignetting, a little blur and sensor noise."""
    h, w = rgb.shape[:2]
    rgb = rgb * (rng.uniform(0.88, 1.1) * (1.0 + rng.uniform(-0.04, 0.04, 3)))
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    r2 = ((gx - w / 2) / (w / 2)) ** 2 + ((gy - h / 2) / (h / 2)) ** 2
    rgb = rgb * (1.0 - rng.uniform(0.0, 0.18) * r2 / 2)[..., None]
    image = to_pil(rgb).filter(ImageFilter.GaussianBlur(rng.uniform(0.35, 0.85)))
    noisy = from_pil(image) + rng.normal(0.0, rng.uniform(1.0, 2.5), (h, w, 1)) + rng.normal(0.0, 1.0, (h, w, 3))
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


def render_scene(index: int, seed: int = DEFAULT_SEED) -> Scene:
    rng = np.random.default_rng([seed, index])
    h, w = pick_size(rng)
    background = str(rng.choice(list(BACKGROUNDS), p=BACKGROUND_WEIGHTS))
    canvas, perch = BACKGROUNDS[background](rng, h, w)
    canvas = np.ascontiguousarray(canvas, dtype=np.float64)
    lx, ly = rng.uniform(-0.6, 0.6), rng.uniform(-0.9, -0.35)
    norm = math.sqrt(lx * lx + ly * ly + 0.36)
    light = (lx / norm, ly / norm, 0.6 / norm)
    count = int(rng.choice([0, 1, 2, 3], p=[0.045, 0.475, 0.33, 0.15]))
    birds = place_birds(rng, count, h, w, background, perch)
    if background in ("sky",):
        depth = list(range(len(birds)))
    else:  # on the ground, lower in the picture is nearer
        depth = sorted(range(len(birds)), key=lambda i: birds[i].cy)
    birds = [birds[i] for i in depth]

    short = min(h, w)
    # Distractors behind the doves: dove-coloured, not dove-shaped. In the sky only a windblown bag;
    # by a wall, only on the ledge and below it.
    kinds = ["bag"] if background == "sky" else ["stone", "bag", "bottle", "can", "bread"]
    top = perch - short * 0.05 if background == "wall" and perch is not None else 0.0
    for _ in range(int(rng.integers(0 if background == "sky" else 1, 3 if background == "sky" else 4))):
        size = short * rng.uniform(0.1, 0.3)
        cx, cy = rng.uniform(0, w), rng.uniform(top, h)
        mask = paint_object(rng, canvas, str(rng.choice(kinds)), cx, cy, size, light)
        if background != "sky":
            darken(canvas, np.roll(mask, (int(size * 0.06), int(size * 0.1)), axis=(0, 1)) & ~mask, 0.3, 2.5)
    for bird in birds:  # soft shadows where standing doves touch the ground
        if bird.pose != "flying" and background != "sky":
            foot = bird.to_image(np.array([bird.feet]))[0]
            shadow = polygon_mask(ellipse(foot[0], foot[1], bird.scale * 0.42, bird.scale * 0.07), h, w)
            darken(canvas, shadow, 0.35, max(1.5, bird.scale * 0.04))

    rendered = [render_bird(bird, h, w, light, rng) for bird in birds]
    occluder = np.zeros((h, w), dtype=bool)
    if birds and rng.random() < 0.27:
        target = birds[int(rng.integers(0, len(birds)))]
        occluder = paint_occluder(rng, canvas, target, light, background == "sky" or target.pose == "flying")

    silhouettes, bird_rgb, covered = [], np.zeros((h, w, 3)), np.zeros((h, w), dtype=bool)
    for drawn in rendered:
        full = np.zeros((h, w), dtype=bool)
        if drawn is not None:
            window, rgb, silhouette = drawn
            full[window] = silhouette
            bird_rgb[window] = np.where(silhouette[..., None], rgb, bird_rgb[window])
            covered |= full
        silhouettes.append(full)
    shapes, visible = annotate(silhouettes, occluder)
    drawn_mask = rasterise_shapes(shapes, h, w)
    bird_rgb = spread_colours(bird_rgb, covered, drawn_mask)
    composite = np.where(drawn_mask[..., None], bird_rgb, canvas)
    rgb = photo_finish(rng, composite)
    quality = int(rng.integers(84, 95))

    stats = _scene_stats(birds, silhouettes, visible, shapes, h, w)
    return Scene(
        index=index,
        name=sample_name(index),
        rgb=rgb,
        shapes=shapes,
        drawn_mask=drawn_mask,
        silhouette_mask=np.logical_or.reduce(visible) if visible else np.zeros((h, w), bool),
        background=background,
        orientation=EXIF_ORIENTATION.get(index, 1),
        quality=quality,
        stats=stats,
    )


def _scene_stats(birds, silhouettes, visible, shapes, h, w) -> dict:
    annotated = occluded = cut = 0
    for bird, silhouette, seen in zip(birds, silhouettes, visible):
        if seen.sum() < MIN_REGION_PX:
            continue
        annotated += 1
        outline = bird.outline_points()
        if outline[:, 0].min() < -1 or outline[:, 1].min() < -1 or outline[:, 0].max() > w or outline[:, 1].max() > h:
            cut += 1
        if seen.sum() < 0.97 * silhouette.sum():
            occluded += 1
    return {
        "doves": annotated,
        "occluded": occluded,
        "border_cut": cut,
        "background_shapes": sum(shape["label"] == "_background_" for shape in shapes),
        "poses": [bird.pose for bird in birds],
        "plumages": [bird.plumage.name for bird in birds],
    }


# ------------------------------------------------------------------------------------------------- files
def sample_name(index: int) -> str:
    return f"dove_{index:03d}"


def encode_jpeg(scene: Scene) -> bytes:
    """The picture as a camera stores it: pixels turned back to the sensor's orientation plus the EXIF tag.
    (Any object with ``rgb``, ``quality`` and ``orientation`` will do: multiclass's photos use it too.)"""
    image = Image.fromarray(scene.rgb, "RGB")
    options = {"quality": scene.quality}
    if scene.orientation != 1:
        image = image.transpose(STORE_TRANSPOSE[scene.orientation])
        exif = Image.Exif()
        exif[0x0112] = scene.orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def labelme_dict(scene: Scene) -> dict:
    """labelme 5's document for a picture with ``name``, ``rgb`` and ``shapes`` (a Scene or multiclass's Photo)."""
    h, w = scene.rgb.shape[:2]
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": scene.shapes,
        "imagePath": f"{scene.name}.jpg",
        "imageData": None,
        "imageHeight": h,
        "imageWidth": w,
    }


def labelme_json_text(labelme: dict) -> str:
    return json.dumps(labelme, indent=2, ensure_ascii=False)


def generate_sample(index: int, seed: int = DEFAULT_SEED) -> tuple[bytes, dict, np.ndarray]:
    """(JPEG bytes, labelme dict, drawn dove mask in labelme's oriented coordinates) of one sample."""
    scene = render_scene(index, seed)
    return encode_jpeg(scene), labelme_dict(scene), scene.drawn_mask


def write_sample(out_dir: Path, index: int, seed: int = DEFAULT_SEED) -> Scene:
    scene = render_scene(index, seed)
    (out_dir / f"{scene.name}.jpg").write_bytes(encode_jpeg(scene))
    (out_dir / f"{scene.name}.json").write_text(labelme_json_text(labelme_dict(scene)), encoding="utf-8")
    return scene


def write_dataset(out_dir: Path, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> list[dict]:
    """Generate samples 0..count-1 into a fresh `out_dir`, replacing it whole (atomically)."""
    from stages.common.outputs import atomic_dir

    out_dir = Path(out_dir)
    if out_dir.exists():
        strangers = [
            p.name for p in out_dir.iterdir() if not (p.name.startswith("dove_") and p.suffix in (".jpg", ".json"))
        ]
        if strangers:
            raise SystemExit(
                f"error: {out_dir} holds files this generator did not write ({strangers[:3]}); refusing to replace it"
            )
    summaries = []
    with atomic_dir(out_dir) as tmp:
        for index in tqdm(range(count), desc="doves", unit="img"):
            scene = write_sample(tmp, index, seed)
            summaries.append({"name": scene.name, "background": scene.background, **scene.stats})
    return summaries


def contact_sheet(paths: list[Path], out: Path, thumb: int = 150, columns: int = 8, outlines: bool = True) -> None:
    """Thumbnails of generated files (EXIF applied), with their dove polygons outlined in red."""
    from PIL import ImageOps

    rows = (len(paths) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * thumb, rows * thumb), (255, 255, 255))
    for i, json_path in enumerate(paths):
        labelme = json.loads(json_path.read_text())
        with Image.open(json_path.with_name(labelme["imagePath"])) as image:
            picture = ImageOps.exif_transpose(image).convert("RGB")
        if outlines:
            draw = ImageDraw.Draw(picture)
            for shape in labelme["shapes"]:
                colour = (255, 0, 0) if shape["label"] == "dove" else (0, 120, 255)
                draw.polygon([tuple(p) for p in shape["points"]], outline=colour)
        picture.thumbnail((thumb - 4, thumb - 4))
        sheet.paste(picture, ((i % columns) * thumb + 2, (i // columns) * thumb + 2))
    sheet.save(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="output folder (replaced whole)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--contact-sheet", type=Path, help="also save a PNG contact sheet of the first 48 images")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    summaries = write_dataset(args.out, args.count, args.seed)
    seconds = time.perf_counter() - started
    by_count = {n: sum(s["doves"] == n for s in summaries) for n in range(4)}
    total_bytes = sum(p.stat().st_size for p in args.out.iterdir())
    print(
        json.dumps(
            {
                "images": len(summaries),
                "seconds": round(seconds, 1),
                "megabytes": round(total_bytes / 1e6, 2),
                "images_by_dove_count": by_count,
                "doves": sum(s["doves"] for s in summaries),
                "occluded_doves": sum(s["occluded"] for s in summaries),
                "border_cut_doves": sum(s["border_cut"] for s in summaries),
                "background_shapes": sum(s["background_shapes"] for s in summaries),
                "exif_oriented": [sample_name(i) for i in sorted(EXIF_ORIENTATION) if i < args.count],
            },
            indent=2,
        )
    )
    if args.contact_sheet:
        contact_sheet(sorted(args.out.glob("*.json"))[:48], args.contact_sheet)


if __name__ == "__main__":
    main(sys.argv[1:])
