"""A low-poly car for the synthetic set: a body of rings along its length, windows, wheels and mirrors as faces.

Cars are sampled with the real data's colours (and their shares) and a spread of body types and sizes.
"""

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

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


def stations(car: Car) -> tuple[list[tuple], list[str]]:
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
    rows, kinds = stations(car)
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
    rows, _ = stations(car)
    front, wheelbase = car.spec.axles
    axle = car.length / 2 - front * car.length
    parts = [(0, _body(car))]
    for side in (-1, 1):
        parts += [(side, _wheel(car, u, side)) for u in (axle, axle - wheelbase * car.length)]
        parts.append((side, _mirror(car, rows[3][0] - 0.16, side)))
    return parts
