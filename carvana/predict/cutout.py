"""The cut-out of a photo (write=cutout, ?output=cutout): an alpha that is 0 on the background, 255 on the car and
soft only in a narrow band at the thresholded edge, and the car's own colour estimated in that band, so that the
studio's colour does not come along as a halo on a new background (colour decontamination).

The figures behind the constants are bench/cutout_edges.py's, in docs/benchmarks.md."""

import cv2
import numpy as np

CUTOUT_ALPHAS = ("probs", "mask")
CUTOUT_COLOURS = ("blur", "ml", "photo")  # the colour in the soft band: estimated (blur fusion, pymatting) | as is

# probs -> alpha: a linear ramp of +-RAMP around the threshold (at 0.5: alpha 0 below 0.15, 255 above 0.85), and only
# within EDGE_BAND px of the thresholded edge. A BCE+Dice model leaves 0.05-0.15 on the background and 0.94-0.99 on
# the car: taken as the alpha, no pixel is 0 and none 255; here both are, even inside the band. bench/cutout_edges.py
# --grid, the alpha's mean error in the edge band (levels), BCE+Dice-like probs / exact probs: ramp 0.5 (the raw
# probability) 12.2 / 0.4, 0.35 3.5 / 9.2, 0.25 7.7 / 12.8; band 3 px and wider the same at 0.35, 2 px 3.9
RAMP = 0.35
EDGE_BAND = 3
MARGIN = 64  # px around the soft band that the colour estimate sees


def alpha_from_probs(probs8: np.ndarray, cut: int, ramp: float = RAMP, band: int = EDGE_BAND) -> np.ndarray:
    """HxW uint8 probs8, the mask's cut (car where probs8 > cut) -> HxW uint8 alpha: 0 or 255 away from the edge, the
    probability's ramp (`ramp` either side of the threshold) within `band` px of it."""
    mask = probs8 > cut
    t = (cut + 0.5) / 255  # the threshold, halfway between the two levels it separates
    lut = np.clip((np.arange(256) / 255 - t) / (2 * ramp) + 0.5, 0, 1)
    alpha = cv2.LUT(probs8, np.round(lut * 255).astype(np.uint8))
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    mask8 = mask.astype(np.uint8)
    edge = cv2.dilate(mask8, kernel) > cv2.erode(mask8, kernel)  # within `band` px of a car/background boundary
    return np.where(edge, alpha, mask8 * np.uint8(255))


def blur_fusion(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """HxWx3 float32 photo and HxWx1 alpha in [0, 1] -> HxWx3 float32 foreground colour: Forte and Pitie's blur
    fusion (Approximate Fast Foreground Colour Estimation, ICIP 2021), a wide pass then a narrow one."""
    fg, bg = _blur_fusion_pass(image, image, image, alpha, 91)
    return _blur_fusion_pass(image, fg, bg, alpha, 7)[0]


def _blur_fusion_pass(image: np.ndarray, fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, size: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One pass: the local means of foreground and background, and the photo's residual given to the foreground."""
    a = cv2.blur(alpha, (size, size))[..., None]
    fg_mean = cv2.blur(fg * alpha, (size, size)) / (a + 1e-5)
    bg_mean = cv2.blur(bg * (1 - alpha), (size, size)) / (1 - a + 1e-5)
    fg = fg_mean + alpha * (image - alpha * fg_mean - (1 - alpha) * bg_mean)
    return np.clip(fg, 0, 1), bg_mean


def foreground_ml(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """HxWx3 float32 photo and HxWx1 alpha in [0, 1] -> HxWx3 float32 foreground colour: pymatting's multi-level
    estimate (Germer et al. 2020; pip install carvana[cutout])."""
    try:
        from pymatting import estimate_foreground_ml  # 3 s to import; numba compiles it once, ~100 s, then caches
    except ImportError as error:
        raise ImportError("cutout_colour=ml needs pymatting: pip install 'carvana[cutout]'") from error
    return estimate_foreground_ml(image.astype(np.float64), alpha[..., 0].astype(np.float64)).astype(np.float32)


def cutout(image: np.ndarray, probs8: np.ndarray, alpha: str, cut: int, colour: str = "blur") -> np.ndarray:
    """HxWx3 uint8 RGB photo, HxW probs8 -> HxWx4 uint8 RGBA cut-out: alpha from the probability ('probs': 0 and 255
    away from the edge, soft in a band at it) or the thresholded mask ('mask'); the colour where 0 < alpha < 255 the
    car's own, estimated (`colour`='blur' or 'ml'), or the photo's ('photo')."""
    a = alpha_from_probs(probs8, cut) if alpha == "probs" else np.where(probs8 > cut, np.uint8(255), np.uint8(0))
    soft = (a > 0) & (a < 255)
    if colour == "photo" or not soft.any():
        return np.dstack([image, a])
    rows, cols = np.flatnonzero(soft.any(axis=1)), np.flatnonzero(soft.any(axis=0))
    # the soft band's box and a margin wider than blur fusion's reach (45 + 3 px): a car fills a third of a photo
    box = np.s_[max(rows[0] - MARGIN, 0):rows[-1] + MARGIN + 1, max(cols[0] - MARGIN, 0):cols[-1] + MARGIN + 1]
    estimate = {"blur": blur_fusion, "ml": foreground_ml}[colour]
    fg = estimate(image[box].astype(np.float32) / 255, a[box][..., None].astype(np.float32) / 255)
    rgb = image.copy()
    rgb[box][soft[box]] = np.round(fg[soft[box]] * 255).astype(np.uint8)  # only the soft band: elsewhere the photo
    return np.dstack([rgb, a])
