"""The cut-out's edge where the truth is known: the colour error of the plain and the decontaminated cut-out on a new
background, the alpha's error, and the time per 1918x1280 photo.

    .venv/bin/python -m bench.cutout_edges [--photos 4] [--sigma 1.5] [--grid]

Real Carvana photos (data/real/train) with their real masks: the mask blurred (Gaussian, --sigma px) is a soft alpha
`a`, the photo is the car's own colour `F` everywhere, and `a*F + (1-a)*B` is a synthetic photo on a known
background `B` (the studio's grey, flat, or another Carvana photo turned upside down: lettering, a floor, a car). Its
cut-out, laid on plain green, is compared with `a*F + (1-a)*green`. The probabilities handed to the cut-out are those
a model would give: the soft alpha itself (`exact`), or a BCE+Dice model's (`bce_dice`: 0.08 on the background, 0.96
on the car, the edge blurred by 1.5 px more). Errors are mean absolute differences in 0..255 levels, averaged over
RGB: `edge` within 6 px of the mask's edge, `bg` on the background farther away. `old` is the cut-out before issue
36 (alpha = probs8, the photo's colour); the others use alpha_from_probs and a colour: photo | blur | ml.
--grid prints the alpha's error over the edge band for other RAMP and EDGE_BAND values.

Lines: `<background> <probs> <cutout> edge_err=<levels> bg_err=<levels> alpha_err=<levels>`, then
`time_per_photo_s <cutout>=<s> ...` (median, alpha and colour together, one thread of numpy/cv2 calls).
"""

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from carvana.data.io import read_image, read_mask
from carvana.predict.cutout import CUTOUT_COLOURS, alpha_from_probs, cutout

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "train"
GREEN = np.array([0, 177, 64], np.float32)  # chroma-key green
CUT = 127  # threshold 0.5


def soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """HxW {0, 1} mask -> HxW float32 alpha in [0, 1], its edge blurred."""
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def model_probs(alpha: np.ndarray, kind: str) -> np.ndarray:
    """The probs8 a model would give for a true alpha: `exact` or `bce_dice` (squeezed into 0.08..0.96, blurred)."""
    if kind == "exact":
        return np.round(alpha * 255).astype(np.uint8)
    return np.round((0.08 + 0.88 * cv2.GaussianBlur(alpha, (0, 0), 1.5)) * 255).astype(np.uint8)


def on_green(rgba: np.ndarray) -> np.ndarray:
    """HxWx4 uint8 cut-out -> HxWx3 float32 laid on plain green."""
    a = rgba[..., 3:].astype(np.float32) / 255
    return a * rgba[..., :3] + (1 - a) * GREEN


def errors(rgba: np.ndarray, truth: np.ndarray, alpha: np.ndarray, edge: np.ndarray) -> tuple[float, float, float]:
    """The mean colour error in the edge band and on the far background, and the alpha error in the band (levels)."""
    diff = np.abs(on_green(rgba) - truth).mean(axis=2)
    alpha_diff = np.abs(rgba[..., 3].astype(np.float32) - alpha * 255)
    return float(diff[edge].mean()), float(diff[~edge & (alpha == 0)].mean()), float(alpha_diff[edge].mean())


def scene(photo: Path, other: Path, sigma: float) -> dict:
    """A real car pasted with a soft alpha onto two known backgrounds: the photos, the truths on green, the band."""
    car, mask = read_image(photo).astype(np.float32), read_mask(photo.parent.parent / "train_masks"
                                                               / f"{photo.stem}_mask.gif")
    alpha = soft(mask, sigma)
    studio = np.median(car[mask == 0], axis=0)
    backgrounds = {"studio": np.broadcast_to(studio, car.shape), "photo": read_image(other)[::-1].astype(np.float32)}
    a = alpha[..., None]
    kernel = np.ones((13, 13), np.uint8)
    edge = cv2.dilate(mask, kernel) > cv2.erode(mask, kernel)
    return {"alpha": alpha, "edge": edge, "truth": a * car + (1 - a) * GREEN,
            "photos": {k: np.round(a * car + (1 - a) * b).astype(np.uint8) for k, b in backgrounds.items()}}


def old_cutout(image: np.ndarray, probs8: np.ndarray, alpha: str, cut: int, colour: str) -> np.ndarray:
    """The cut-out before issue 36: the probability as the alpha, the photo's colour."""
    return np.dstack([image, probs8])


def main() -> None:
    """Print the errors per background, probs and cut-out over --photos photos, then the times."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--sigma", type=float, default=1.5)
    parser.add_argument("--grid", action="store_true")
    args = parser.parse_args()
    paths = sorted(DATA.glob("*.jpg"))[:: max(1, 16 // args.photos)][: args.photos]
    ways = {"old": old_cutout, **{c: cutout for c in CUTOUT_COLOURS}}
    results: dict[tuple, list] = {}
    times: dict[str, list] = {w: [] for w in ways}
    for i, path in enumerate(paths):
        s = scene(path, paths[(i + 1) % len(paths)], args.sigma)
        for background, image in s["photos"].items():
            for probs in ("exact", "bce_dice"):
                probs8 = model_probs(s["alpha"], probs)
                if args.grid and background == "studio":
                    grid(probs8, s, background, probs)
                for way, fn in ways.items():
                    start = time.perf_counter()
                    rgba = fn(image, probs8, "probs", CUT, "photo" if way == "old" else way)
                    times[way].append(time.perf_counter() - start)
                    results.setdefault((background, probs, way), []).append(errors(rgba, s["truth"], s["alpha"],
                                                                                   s["edge"]))
    for (background, probs, way), errs in results.items():
        e, b, a = np.mean(errs, axis=0)
        print(f"{background} {probs} {way} edge_err={e:.2f} bg_err={b:.2f} alpha_err={a:.2f}")
    print("time_per_photo_s " + " ".join(f"{w}={statistics.median(t[1:] or t):.3f}" for w, t in times.items()))


def grid(probs8: np.ndarray, s: dict, background: str, probs: str) -> None:
    """The alpha's mean error in the edge band for other ramps and bands (0.5: the probability within the band)."""
    for ramp in (0.5, 0.35, 0.25, 0.15):
        row = []
        for band in (1, 2, 3, 5, 8):
            a = alpha_from_probs(probs8, CUT, ramp, band).astype(np.float32)
            row.append(f"band{band}={np.abs(a - s['alpha'] * 255)[s['edge']].mean():.2f}")
        print(f"grid {background} {probs} ramp={ramp} " + " ".join(row))


if __name__ == "__main__":
    main()
