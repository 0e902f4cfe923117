"""A synthetic data set in Carvana's exact layout: a low-poly car on a studio turntable, 16 angles, masks and csvs.

python -m carvana.synthetic --root data/synthetic --train-cars 8 --test-cars 2 --height 1280 --width 1918 --seed 0
"""

import argparse
import csv
import functools
import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from carvana import CarvanaError
from carvana.io import write_image, write_mask_gif
from carvana.rle import rle_encode

ANGLES = 16  # turntable stops 22.5 degrees apart: 01 faces the camera, 05 shows a side, 09 the back, 13 the other side
REF_SHAPE = (1280, 1918)  # Kaggle's photos (height, width): the camera and the size classes are set for them
JPEG_QUALITY = 60  # Kaggle's photos carry libjpeg's quality-57 tables (~90 KB each)
METADATA_COLUMNS = ("id", "year", "make", "model", "trim1", "trim2", "area", "train", "size", "color",
                    "simplified_color", "stratifeature")
# size in metadata.csv: 7 equal bins of a car's mask area summed over its 16 photos, from the real min to max
SIZE_NAMES = ("very very small", "very small", "small", "medium", "large", "very large", "very very large")
AREA_RANGE = (4_249_161, 14_361_358)
# (color, simplified_color, RGB, share): the real shares; white and silver on the white backdrop are the hard cases
COLORS = (("Black", "Black", (16, 17, 19), 0.37), ("White", "White", (238, 238, 234), 0.30),
          ("Gray", "Gray", (182, 184, 188), 0.08), ("Gray", "Gray", (88, 91, 96), 0.06),
          ("Red", "Red", (150, 18, 20), 0.11), ("Blue", "Blue", (24, 44, 112), 0.05),
          ("Yellow", "Others", (225, 180, 20), 0.02), ("Teal", "Others", (20, 110, 115), 0.01))


class Body(NamedTuple):
    """A body type: size ranges and heights in m, its profile, and its share of the cars."""

    length: tuple[float, float]
    width: tuple[float, float]
    height: tuple[float, float]
    clearance: float
    belt: float  # bonnet and window sills, at the middle of the height range
    wheel: float  # radius
    profile: tuple  # bonnet, windshield, roof and rear window lengths as fractions of the car's length
    axles: tuple[float, float]  # front overhang and wheelbase as fractions of the length
    share: float


BODIES = {  # metres; the longest fit the frame (Kaggle's largest trucks would touch its edges)
    "City car": Body((2.7, 3.2), (1.60, 1.70), (1.50, 1.58), 0.14, 0.86, 0.28,
                     (0.12, 0.22, 0.42, 0.16), (0.13, 0.68), 0.10),
    "Hatchback": Body((3.7, 4.2), (1.68, 1.80), (1.42, 1.52), 0.14, 0.90, 0.31,
                      (0.24, 0.17, 0.38, 0.13), (0.17, 0.62), 0.15),
    "Sedan": Body((4.4, 5.0), (1.75, 1.88), (1.40, 1.48), 0.14, 0.96, 0.33,
                  (0.30, 0.15, 0.25, 0.12), (0.19, 0.59), 0.30),
    "SUV": Body((4.4, 5.0), (1.80, 1.95), (1.62, 1.78), 0.20, 1.06, 0.37,
                (0.24, 0.13, 0.47, 0.07), (0.17, 0.60), 0.25),
    "Full-size SUV": Body((5.1, 5.6), (1.95, 2.05), (1.86, 2.00), 0.22, 1.18, 0.40,
                          (0.22, 0.12, 0.52, 0.06), (0.16, 0.60), 0.10),
    "Pickup": Body((5.3, 5.7), (1.95, 2.05), (1.80, 1.98), 0.24, 1.14, 0.40,
                   (0.27, 0.10, 0.22, 0.02), (0.15, 0.62), 0.10),  # its "rear window" is the cab's back
}
# metres, and px at 1280 rows: a 4.7 m sedan covers ~21% of its side view and ~13% of its front view, as Kaggle's A4
EYE, TARGET, FOCAL = np.array([0.0, 1.45, 11.0]), np.array([0.0, 0.55, 0.0]), 3300.0
LIGHT = np.array([-0.3, 1.0, 0.55]) / np.linalg.norm([-0.3, 1.0, 0.55])  # studio softboxes above, in front
GLOSS = {"paint": 0.2, "glass": 0.4, "window": 0.4, "matte": 0.04}
SEE_THROUGH = 0.4  # share of the studio seen through the windows (in the mask all the same)
TIRE, ARCH, GLASS = (30, 30, 32), (14, 14, 15), (28, 33, 40)


class Face(NamedTuple):
    """A planar polygon of the car in car coordinates (u forward, v up, w sideways), its outward normal and paint."""

    pts: np.ndarray
    normal: np.ndarray
    rgb: tuple
    kind: str
    decals: list  # (pts, rgb, kind) drawn on top of the face when it faces the camera
    first: bool = False  # a wheel arch: drawn before the wheel it frames


@dataclass
class Car:
    """One synthetic car: its id, body, colour and dimensions in metres."""

    car_id: str
    body: str
    color: str
    simplified_color: str
    rgb: tuple
    length: float
    width: float
    height: float
    year: int
    rim_rgb: tuple  # alloy, dark alloy or black steel
    antenna_px: int  # the roof antenna's thickness at 1280 rows, 0 for none (thin parts the mask must keep)
    place: tuple  # (x, z offset on the turntable in m, yaw in degrees, wheel spoke phase)

    @property
    def spec(self) -> Body:
        """The car's body type."""
        return BODIES[self.body]

    @property
    def belt(self) -> float:
        """Height of the bonnet and the window sills in m: the body type's, scaled with the car's height."""
        return self.spec.belt * self.height / np.mean(self.spec.height)


def sample_car(car_id: str, rng: np.random.Generator) -> Car:
    """Draw one car: body type, colour and size (longer cars are also wider)."""
    body = list(BODIES)[rng.choice(len(BODIES), p=[b.share for b in BODIES.values()])]
    lengths, widths, heights = BODIES[body].length, BODIES[body].width, BODIES[body].height
    k = rng.uniform()
    color, simple, rgb, _ = COLORS[rng.choice(len(COLORS), p=[c[-1] for c in COLORS])]
    shift = rng.integers(-8, 9)  # lighter or darker, barely tinted: a black car stays black
    rgb = tuple(int(np.clip(c + shift + rng.integers(-2, 3), 0, 255)) for c in rgb)
    rim = ((176, 178, 182), (92, 94, 98), (34, 34, 36))[rng.choice(3, p=[0.6, 0.25, 0.15])]
    place = (*rng.uniform(-0.15, 0.15, 2), rng.uniform(-2, 2), rng.uniform(0, 2 * np.pi))
    return Car(car_id, body, color, simple, rgb, lengths[0] + k * (lengths[1] - lengths[0]),
               widths[0] + k * (widths[1] - widths[0]), rng.uniform(*heights), int(rng.integers(2008, 2017)), rim,
               int(rng.choice([0, 1, 2, 3], p=[0.3, 0.2, 0.3, 0.2])), place)


def _solid(rings: list[np.ndarray], rgb: tuple, kind: str) -> list[Face]:
    """A closed solid lofted through rings of (K, 3) points: [first cap, last cap, side quads...], normals outward."""
    k = len(rings[0])
    polys = [rings[0][::-1], rings[-1]]
    polys += [np.stack([a[j], a[(j + 1) % k], b[(j + 1) % k], b[j]]) for a, b in itertools.pairwise(rings)
              for j in range(k)]
    normals = [np.sum(np.cross(p, np.roll(p, -1, axis=0)), axis=0) for p in polys]  # Newell: area-weighted
    volume = sum(float(n @ p.mean(axis=0)) for n, p in zip(normals, polys))
    sign = 1.0 if volume > 0 else -1.0  # a positive signed volume means the winding gives outward normals
    return [Face(p, sign * n / max(np.linalg.norm(n), 1e-12), rgb, kind, []) for n, p in zip(normals, polys)]


def _inset(quad: np.ndarray, s0: float, s1: float, t0: float, t1: float) -> np.ndarray:
    """The patch s0..s1 x t0..t1 of a lofted quad (s along its section edge, t towards the next station), (4, 3)."""
    p0, p1, p2, p3 = quad

    def at(s: float, t: float) -> np.ndarray:
        return (1 - t) * ((1 - s) * p0 + s * p1) + t * ((1 - s) * p3 + s * p2)

    return np.stack([at(s0, t0), at(s1, t0), at(s1, t1), at(s0, t1)])


def _stations(car: Car) -> tuple[list[tuple], list[str]]:
    """Body stations front to back, (u, v_bottom, v_shoulder, v_top, half width, half roof), and segment kinds."""
    c, fractions = car.spec.clearance, car.spec.profile
    n, hw, b, top = car.length / 2, car.width / 2, car.belt, car.height
    u_ws = n - fractions[0] * car.length
    u_r1 = u_ws - fractions[1] * car.length
    u_r2 = u_r1 - fractions[2] * car.length
    u_d = u_r2 - fractions[3] * car.length
    rows = [(n, c + 0.14, b - 0.22, b - 0.17, 0.86 * hw, 0.70 * hw),  # nose
            (n - 0.12, c + 0.04, b - 0.07, b - 0.04, 0.96 * hw, 0.78 * hw),
            (n - 0.45, c, b - 0.02, b + 0.01, hw, 0.82 * hw),
            (u_ws, c, b, b + 0.03, hw, 0.82 * hw),  # foot of the windshield
            (u_r1, c, b + 0.04, top, hw, 0.74 * hw),  # roof
            (u_r2, c, b + 0.06, top - 0.02, hw, 0.74 * hw),
            (u_d, c, b + 0.04, b + 0.07, hw, 0.80 * hw),  # boot lid, tailgate top or pickup bed
            (-n + 0.12, c + 0.04, b - 0.05, b - 0.02, 0.96 * hw, 0.78 * hw),
            (-n, c + 0.12, b - 0.15, b - 0.12, 0.88 * hw, 0.72 * hw)]  # tail
    return rows, ["paint", "paint", "paint", "windshield", "roof", "rear", "paint", "paint"]


def _ring(u: float, vb: float, vs: float, vt: float, hw: float, hr: float) -> np.ndarray:
    """The body's cross-section at one station, counter-clockwise in (w, v), as (10, 3) (u, v, w) points."""
    lo, mid = vb + 0.3 * (vs - vb), vb + 0.7 * (vs - vb)  # a crease along the side catches the light
    wv = [(-0.9 * hw, vb), (0.9 * hw, vb), (0.97 * hw, lo), (hw, mid), (0.97 * hw, vs), (hr, vt), (-hr, vt),
          (-0.97 * hw, vs), (-hw, mid), (-0.97 * hw, lo)]
    return np.array([(u, v, w) for w, v in wv])


def _body(car: Car) -> list[Face]:
    """The body: lofted stations, glass set into windshield, side and rear windows, lights and plates on the ends."""
    rows, kinds = _stations(car)
    rings = [_ring(*r) for r in rows]
    faces = _solid(rings, car.rgb, "paint")
    roof = rows[4][0] - rows[5][0]
    edges = np.linspace(0, 1, 2 + int(roof > 0.9) + int(roof > 1.9))
    gap = 0.035 / roof  # the B-pillars
    for i, kind in enumerate(kinds):
        for j in (4, 5, 6):  # right side window, top, left side window
            quad = np.stack([rings[i][j], rings[i][j + 1], rings[i + 1][j + 1], rings[i + 1][j]])
            patches = []
            if kind in ("windshield", "rear") and j == 5:
                patches = [(0.04, 0.96, 0.06, 0.94)]
            elif kind in ("windshield", "rear"):
                patches = [(0.12, 0.9, 0.3, 1.0) if kind == "windshield" else (0.12, 0.9, 0.0, 0.65)]
            elif kind == "roof" and j != 5:
                patches = [(0.12, 0.9, a + gap * (a > 0), z - gap * (z < 1)) for a, z in itertools.pairwise(edges)]
            faces[2 + i * len(rings[0]) + j].decals.extend((_inset(quad, *p), GLASS, "window") for p in patches)
    for cap, lamp, (u, vb, vs, _, hw, _) in ((faces[0], (250, 250, 245), rows[0]), (faces[1], (190, 20, 24), rows[-1])):
        h = vs - vb
        for s in (-1, 1):
            cap.decals.append((_rect(u, s * 0.45 * hw, s * 0.8 * hw, vs - 0.3 * h, vs - 0.08 * h), lamp, "glass"))
        if cap is faces[0]:
            cap.decals.append((_rect(u, -0.35 * hw, 0.35 * hw, vb + 0.32 * h, vs - 0.1 * h), (40, 40, 42), "matte"))
        cap.decals.append((_rect(u, -0.26, 0.26, vb + 0.08 * h, vb + 0.08 * h + 0.11), (235, 235, 235), "matte"))
    return faces


def _rect(u: float, w0: float, w1: float, v0: float, v1: float) -> np.ndarray:
    """A rectangle on the plane u = const, (4, 3)."""
    return np.array([(u, v0, w0), (u, v0, w1), (u, v1, w1), (u, v1, w0)])


def _wheel(car: Car, u0: float, side: int) -> list[Face]:
    """A wheel on one side (side = +-1): tyre cylinder, rim and spokes on its outer face, the dark arch behind it."""
    r, hw, c = car.spec.wheel, car.width / 2, car.spec.clearance
    a = np.linspace(0, 2 * np.pi, 28, endpoint=False)

    def disc(radius: float, w: float, v0: float = r, angles: np.ndarray = a) -> np.ndarray:
        return np.column_stack([u0 + radius * np.cos(angles), v0 + radius * np.sin(angles), np.full(len(angles), w)])

    w_out = side * (hw + 0.01)
    faces = _solid([disc(r, w_out), disc(r, w_out - side * 0.24)], TIRE, "matte")
    phase = car.place[3]
    spokes = [np.array([(u0 + rho * np.cos(p) - d * np.sin(p), r + rho * np.sin(p) + d * np.cos(p), w_out)
                        for rho, d in ((0.12 * r, -0.07 * r), (0.6 * r, -0.05 * r), (0.6 * r, 0.05 * r),
                                       (0.12 * r, 0.07 * r))]) for p in phase + np.arange(5) * 2 * np.pi / 5]
    rim = [(disc(0.66 * r, w_out), car.rim_rgb, "paint"), (disc(0.58 * r, w_out), (22, 22, 24), "matte")]
    faces[0].decals.extend(rim + [(s, car.rim_rgb, "paint") for s in spokes + [disc(0.14 * r, w_out)]])
    arch = np.vstack([disc(1.08 * r, side * (hw + 0.004), angles=np.linspace(0, np.pi, 14)),
                      [(u0 - 1.08 * r, c, side * (hw + 0.004)), (u0 + 1.08 * r, c, side * (hw + 0.004))]])
    return [Face(arch, np.array([0.0, 0.0, side]), ARCH, "matte", [], first=True)] + faces


def _mirror(car: Car, u0: float, side: int) -> list[Face]:
    """A door mirror sticking out of the side at the front of the side window."""
    hw, b = car.width / 2, car.belt

    def plate(w: float, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
        return np.array([(u0, v0, w), (u1, v0, w), (u1, v1, w), (u0, v1, w)])

    return _solid([plate(side * (hw - 0.04), u0 + 0.07, u0 - 0.07, b + 0.03, b + 0.17),
                   plate(side * (hw + 0.19), u0 + 0.04, u0 - 0.10, b + 0.05, b + 0.16)], car.rgb, "paint")


def car_parts(car: Car) -> list[tuple[int, list[Face]]]:
    """The car as (side, faces) parts: the body (side 0), then wheels and mirrors on side +1 or -1."""
    rows, _ = _stations(car)
    front, wheelbase = car.spec.axles
    axle = car.length / 2 - front * car.length
    parts = [(0, _body(car))]
    for side in (-1, 1):
        parts += [(side, _wheel(car, u, side)) for u in (axle, axle - wheelbase * car.length)]
        parts.append((side, _mirror(car, rows[3][0] - 0.16, side)))
    return parts


def _camera(shape: tuple[int, int]) -> tuple[np.ndarray, float, float, float]:
    """The studio camera for a photo size: world-to-camera rotation, focal length in px, principal point."""
    fwd = (TARGET - EYE) / np.linalg.norm(TARGET - EYE)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    focal = FOCAL * min(shape[0] / REF_SHAPE[0], shape[1] / REF_SHAPE[1])
    return np.stack([right, np.cross(right, fwd), fwd]), focal, shape[1] / 2, shape[0] / 2


def _project(world: np.ndarray, camera: tuple) -> np.ndarray:
    """World points (N, 3) in m (x right, y up, z towards the camera) -> pixel (x, y), (N, 2) float."""
    rot, focal, cx, cy = camera
    p = (world - EYE) @ rot.T
    return np.column_stack([cx + focal * p[:, 0] / p[:, 2], cy - focal * p[:, 1] / p[:, 2]])


def _shade(rgb: tuple, kind: str, normal: np.ndarray) -> tuple:
    """Flat studio shading of one face: soft light from above plus the bright ceiling and grey floor reflected."""
    lambert, gloss = max(0.0, float(normal @ LIGHT)), GLOSS[kind]
    env = 130.0 + 110.0 * max(0.0, float(normal[1]))
    return tuple(min(255.0, (1 - gloss) * c * (0.62 + 0.38 * lambert) + gloss * env) for c in rgb)


def _fill(image: np.ndarray, mask: np.ndarray, pts: np.ndarray, rgb: tuple, behind: np.ndarray | None = None) -> None:
    """Fill one projected polygon, anti-aliased in the photo (see-through over `behind`) and hard in the mask."""
    p = np.round(pts * 16).astype(np.int32)  # 1/16 px vertex precision
    cv2.fillPoly(mask, [p], 1, cv2.LINE_8, shift=4)
    if behind is None:
        cv2.fillPoly(image, [p], rgb, cv2.LINE_AA, shift=4)
        return
    x, y, w, h = cv2.boundingRect(p >> 4)
    x0, y0, x1, y1 = max(0, x - 1), max(0, y - 1), min(image.shape[1], x + w + 2), min(image.shape[0], y + h + 2)
    if x1 <= x0 or y1 <= y0:
        return
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(alpha, [p - [x0 * 16, y0 * 16]], 255, cv2.LINE_AA, shift=4)
    a = alpha[..., None].astype(np.float32) / 255
    glass = (1 - SEE_THROUGH) * np.array(rgb, np.float32) + SEE_THROUGH * behind[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = (image[y0:y1, x0:x1] * (1 - a) + glass * a).astype(np.uint8)


def _draw_car(image: np.ndarray, mask: np.ndarray, parts: list, rot: np.ndarray, offset: np.ndarray,
              camera: tuple) -> None:
    """Painter's algorithm: far-side wheels and mirrors, then the body, then the near side, each back to front."""
    behind = image.copy()
    items = []
    for side, faces in parts:
        world = [(f, f.pts @ rot.T + offset, rot @ f.normal) for f in faces]
        layer, part_depth = 1, 0.0
        if side:
            view = EYE - np.mean([p.mean(axis=0) for _, p, _ in world], axis=0)
            # seen from within ~15 degrees of edge-on (front and back views) the body hides the wheel tops: draw first
            layer = 2 if rot @ np.array([0.0, 0.0, side]) @ view / np.linalg.norm(view) > 0.25 else 0
            part_depth = -np.linalg.norm(view)
        for f, pts, n in world:
            view = EYE - pts.mean(axis=0)
            if n @ view > 0:
                items.append(((layer, part_depth, not f.first, -np.linalg.norm(view)), f, pts, n))
    for _, f, pts, n in sorted(items, key=lambda item: item[0]):
        _fill(image, mask, _project(pts, camera), _shade(f.rgb, f.kind, n))
        for decal, rgb, kind in f.decals:
            _fill(image, mask, _project(decal @ rot.T + offset, camera), _shade(rgb, kind, n),
                  behind if kind == "window" else None)


@functools.lru_cache(maxsize=2)
def _studio(shape: tuple[int, int]) -> np.ndarray:
    """The empty studio, HxWx3 uint8 RGB: white backdrop with lettering, grey cyclorama floor, turntable disc."""
    h, w = shape
    y = (np.arange(h, dtype=np.float32) / h)[:, None]
    wall = np.array([247, 246, 249], np.float32) - 10 * y / 0.3
    floor = (np.array([198, 199, 204], np.float32) - 16 * np.clip((y - 0.3) / 0.6, 0, 1)
             + 30 * np.clip((y - 0.9) / 0.1, 0, 1) ** 2)
    blend = 0.5 + 0.5 * np.tanh((y - 0.305) / 0.005)  # the backdrop curves into the floor
    x = np.arange(w, dtype=np.float32) / w
    vignette = 1 - 0.06 * (2 * x - 1) ** 2
    image = ((wall * (1 - blend) + floor * blend)[:, None, :] * vignette[None, :, None]).astype(np.uint8)
    font, text = cv2.FONT_HERSHEY_SIMPLEX, "CARVANA"
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = min(0.17 * h / th, 0.9 * w / tw)
    cv2.putText(image, text, (int((w - tw * scale) / 2), int(0.29 * h)), font, scale, (100, 100, 104),
                max(1, round(0.016 * h)), cv2.LINE_AA)
    thin = max(1, round(0.0016 * h))
    cv2.rectangle(image, (int(0.352 * w), int(0.105 * h)), (int(0.607 * w), int(0.305 * h)), (214, 214, 218), thin)
    centre, axes = (round(0.5 * w * 16), round(0.685 * h * 16)), (round(0.505 * w * 16), round(0.178 * h * 16))
    cv2.ellipse(image, centre, axes, 0, 0, 360, (183, 180, 176), -1, cv2.LINE_AA, 4)
    cv2.ellipse(image, centre, axes, 0, 0, 360, (150, 150, 153), thin, cv2.LINE_AA, 4)
    return image


def _seams(image: np.ndarray, phi: float) -> None:
    """Draw the turntable's plank seams, turned by phi radians with the car."""
    h, w = image.shape[:2]
    for p0, p1 in ((0.35, 2.55), (1.25, 4.1), (3.4, 5.75)):
        ends = [np.round([(0.5 * w + 0.505 * w * np.cos(p + phi)) * 16, (0.685 * h + 0.178 * h * np.sin(p + phi)) * 16])
                .astype(int) for p in (p0, p1)]
        cv2.line(image, tuple(ends[0]), tuple(ends[1]), (162, 160, 158), max(1, round(0.0016 * h)), cv2.LINE_AA, 4)


def _shadow(image: np.ndarray, car: Car, rot: np.ndarray, offset: np.ndarray, camera: tuple) -> None:
    """Darken the floor under the car: a wide soft shadow and a darker contact shadow (neither is in the mask)."""
    h, w = image.shape[:2]
    small = np.zeros((max(8, h // 4), max(8, w // 4)), np.float32)
    k = small.shape[1] / w
    for du, dw, strength, sigma in ((car.length / 2 + 0.3, car.width / 2 + 0.35, 0.35, 0.03),
                                    (0.45 * car.length, 0.45 * car.width, 0.4, 0.01)):
        foot = np.array([(du, 0, dw), (-du, 0, dw), (-du, 0, -dw), (du, 0, -dw)]) @ rot.T + offset
        layer = np.zeros_like(small)
        cv2.fillPoly(layer, [np.round(_project(foot, camera) * k * 16).astype(np.int32)], strength, cv2.LINE_8, 4)
        small += cv2.GaussianBlur(layer, (0, 0), sigma * small.shape[0])
    rows, cols = np.nonzero(small > 0.004)
    if rows.size:
        y0, y1 = int(rows.min() / k), min(h, int((rows.max() + 1) / k) + 1)
        x0, x1 = int(cols.min() / k), min(w, int((cols.max() + 1) / k) + 1)
        factor = 1 - cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)[y0:y1, x0:x1, None]
        image[y0:y1, x0:x1] = (image[y0:y1, x0:x1] * factor).astype(np.uint8)


def render_photo(car: Car, parts: list, angle: int, shape: tuple[int, int], rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The car at turntable stop `angle` (1..16) -> (HxWx3 uint8 RGB photo, HxW uint8 {0,1} mask)."""
    theta = np.deg2rad(22.5 * (angle - 1) + car.place[2])
    s, c = np.sin(theta), np.cos(theta)
    # car (u forward, v up, w sideways) -> world: at angle 01 the front faces the camera, at 05 it points left
    rot = np.array([[-s, 0.0, c], [0.0, 1.0, 0.0], [c, 0.0, s]])
    offset = np.array([car.place[0], 0.0, car.place[1]])
    camera = _camera(shape)
    image = _studio(shape).copy()
    mask = np.zeros(shape, np.uint8)
    _seams(image, theta)
    _shadow(image, car, rot, offset, camera)
    _draw_car(image, mask, parts, rot, offset, camera)
    if car.antenna_px:
        u, top = _stations(car)[0][5][0] + 0.12, car.height - 0.01
        ends = np.round(_project(np.array([(u, top, 0.0), (u - 0.1, top + 0.3, 0.0)]) @ rot.T + offset, camera) * 16)
        thick = max(1, round(car.antenna_px * shape[0] / REF_SHAPE[0]))
        p, q = tuple(ends[0].astype(int)), tuple(ends[1].astype(int))
        cv2.line(image, p, q, (25, 25, 27), thick, cv2.LINE_AA, 4)
        cv2.line(mask, p, q, 1, thick, cv2.LINE_8, 4)
    image = cv2.add(image, rng.integers(-3, 4, size=image.shape, dtype=np.int8), dtype=cv2.CV_8U)  # sensor noise
    return image, mask


def _size_class(area: int, shape: tuple[int, int]) -> str:
    """Kaggle's size class of a car from its mask area summed over 16 photos, rescaled to 1280x1918 photos."""
    ref = area * REF_SHAPE[0] * REF_SHAPE[1] / (shape[0] * shape[1])
    k = int((ref - AREA_RANGE[0]) / (AREA_RANGE[1] - AREA_RANGE[0]) * len(SIZE_NAMES))
    return SIZE_NAMES[min(max(k, 0), len(SIZE_NAMES) - 1)]


def _write_car(out: Path, car: Car, train: bool, shape: tuple[int, int], rng: np.random.Generator) -> tuple[list, dict]:
    """Write the 16 photos (and masks) of one car -> (csv rows, metadata row)."""
    parts, rows, area = car_parts(car), [], 0
    for angle in range(1, ANGLES + 1):
        image, mask = render_photo(car, parts, angle, shape, rng)
        name = f"{car.car_id}_{angle:02d}.jpg"
        write_image(out / ("train" if train else "test") / name, image, quality=JPEG_QUALITY)
        if train:
            write_mask_gif(out / "train_masks" / name.replace(".jpg", "_mask.gif"), mask)
        rows.append((name, rle_encode(mask) if train else "1 1"))  # Kaggle's sample_submission says "1 1"
        area += int(mask.sum())
    size, white = _size_class(area, shape), "White" if car.simplified_color == "White" else "Non-white"
    meta = {"id": car.car_id, "year": car.year, "make": "Synthetic", "model": car.body, "trim1": car.body,
            "trim2": f"{car.length:.2f} m", "area": area, "train": "TRUE" if train else "FALSE", "size": size,
            "color": car.color, "simplified_color": car.simplified_color, "stratifeature": f"{size}-{white}"}
    return rows, meta


def _write_csv(path: Path, header: tuple, rows: list, newline: str = "\n") -> None:
    """Write a CSV file (Kaggle's metadata.csv ends its lines with CRLF, its other csvs with LF)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator=newline)
        writer.writerow(header)
        writer.writerows(rows)


def _write_set(out: Path, train_cars: int, test_cars: int, shape: tuple[int, int], seed: int) -> None:
    """Write a whole set into the empty directory `out`."""
    for sub in ("train", "train_masks", "test"):
        (out / sub).mkdir(parents=True)
    master, ids = np.random.default_rng(seed), []
    while len(ids) < train_cars + test_cars:
        car_id = master.bytes(6).hex()  # 12 lowercase hex digits, as Kaggle's
        ids += [car_id] if car_id not in ids else []
    masks, submission, metadata = [], [], []
    for i, car_id in enumerate(ids):
        rng = np.random.default_rng([seed, i])
        rows, meta = _write_car(out, sample_car(car_id, rng), i < train_cars, shape, rng)
        (masks if i < train_cars else submission).extend(rows)
        metadata.append([meta[c] for c in METADATA_COLUMNS])
    _write_csv(out / "train_masks.csv", ("img", "rle_mask"), sorted(masks))
    _write_csv(out / "sample_submission.csv", ("img", "rle_mask"), sorted(submission))
    _write_csv(out / "metadata.csv", METADATA_COLUMNS, metadata, newline="\r\n")


def _images(csv_path: Path) -> list[str]:
    """The `img` column of a Kaggle csv (train_masks.csv, sample_submission.csv)."""
    with csv_path.open(newline="") as f:
        return [row["img"] for row in csv.DictReader(f)]


def is_complete(root: str | os.PathLike) -> bool:
    """Whether root holds a whole Carvana-layout set: the three csvs, 16 photos a car, every photo and mask listed."""
    root = Path(root)
    try:
        train, test = _images(root / "train_masks.csv"), _images(root / "sample_submission.csv")
        with (root / "metadata.csv").open(newline="") as f:
            cars = {row["id"] for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error):
        return False
    listed = {name.rsplit("_", 1)[0] for name in train + test}
    return (bool(train) and len(train) % ANGLES == 0 and len(test) % ANGLES == 0 and listed <= cars
            and all((root / "train" / n).is_file() and (root / "train_masks" / n.replace(".jpg", "_mask.gif")).is_file()
                    for n in train) and all((root / "test" / n).is_file() for n in test))


def make_dataset(root: str | os.PathLike, train_cars: int = 8, test_cars: int = 2,
                 size: tuple[int, int] = REF_SHAPE, seed: int = 0, overwrite: bool = False) -> Path:
    """Generate a synthetic set in Carvana's layout at root, size = (height, width); the same seed, the same bytes."""
    root, (height, width) = Path(root), size
    if train_cars < 1 or test_cars < 0:
        raise CarvanaError(f"need at least 1 training car and 0 test cars, got {train_cars} and {test_cars}")
    if height < 32 or width < 32:
        raise CarvanaError(f"photo size {height}x{width} is too small: use at least 32x32 (Kaggle's is 1280x1918)")
    if root.exists() and not overwrite and (not root.is_dir() or any(root.iterdir())):
        what = "a complete data set" if is_complete(root) else "not empty"
        raise CarvanaError(f"{root} already exists and is {what}: delete it, choose another root, "
                           "or overwrite it (--overwrite)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (root.with_name(f".{root.name}.{what}{os.getpid()}") for what in ("tmp", "old"))
    try:
        _write_set(tmp, train_cars, test_cars, (height, width), seed)
        if overwrite and root.is_dir():
            os.replace(root, old)
        elif overwrite and root.exists():
            root.unlink()
        try:
            os.replace(tmp, root)  # atomic; fails if root has become a non-empty directory meanwhile
        except OSError:
            if not is_complete(root):
                raise
            # another process (a DDP rank) generated the same set meanwhile: keep its copy, it may be reading it
    finally:
        for path in (tmp, old):  # an interrupted run leaves neither a half set nor temporary files
            shutil.rmtree(path, ignore_errors=True)
    return root


def main() -> None:
    """Command line: python -m carvana.synthetic --root data/synthetic --train-cars 8 --test-cars 2."""
    parser = argparse.ArgumentParser(description="Generate a synthetic data set in Carvana's layout")
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--train-cars", type=int, default=8)
    parser.add_argument("--test-cars", type=int, default=2)
    parser.add_argument("--height", type=int, default=REF_SHAPE[0])
    parser.add_argument("--width", type=int, default=REF_SHAPE[1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing root")
    args = parser.parse_args()
    try:
        root = make_dataset(args.root, args.train_cars, args.test_cars, (args.height, args.width), args.seed,
                            args.overwrite)
    except CarvanaError as err:
        raise SystemExit(f"error: {err}") from None
    print(root)


if __name__ == "__main__":
    main()
