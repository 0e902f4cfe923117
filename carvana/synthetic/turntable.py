"""The studio turntable: a low-poly car (carvana.synthetic.lowpoly) rendered as a Carvana photo and its mask.

The camera, light and white backdrop are set for Kaggle's 1918x1280 photos; the car's soft shadow is drawn on the floor
but left out of the mask, as in Kaggle's masks, while windows, wheels, mirrors and the antenna are in it.
"""

import functools

import cv2
import numpy as np

from carvana.synthetic.lowpoly import Car, stations

REF_SHAPE = (1280, 1918)  # Kaggle's photos (height, width): the camera and the size classes are set for them
# metres, and px at 1280 rows: a 4.7 m sedan covers ~21% of its side view and ~13% of its front view, as Kaggle's A4
EYE, TARGET, FOCAL = np.array([0.0, 1.45, 11.0]), np.array([0.0, 0.55, 0.0]), 3300.0
LIGHT = np.array([-0.3, 1.0, 0.55]) / np.linalg.norm([-0.3, 1.0, 0.55])  # studio softboxes above, in front
GLOSS = {"paint": 0.2, "glass": 0.4, "window": 0.4, "matte": 0.04}
SEE_THROUGH = 0.4  # share of the studio seen through the windows (in the mask all the same)


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
        u, top = stations(car)[0][5][0] + 0.12, car.height - 0.01
        ends = np.round(_project(np.array([(u, top, 0.0), (u - 0.1, top + 0.3, 0.0)]) @ rot.T + offset, camera) * 16)
        thick = max(1, round(car.antenna_px * shape[0] / REF_SHAPE[0]))
        p, q = tuple(ends[0].astype(int)), tuple(ends[1].astype(int))
        cv2.line(image, p, q, (25, 25, 27), thick, cv2.LINE_AA, 4)
        cv2.line(mask, p, q, 1, thick, cv2.LINE_8, 4)
    image = cv2.add(image, rng.integers(-3, 4, size=image.shape, dtype=np.int8), dtype=cv2.CV_8U)  # sensor noise
    return image, mask
