"""Overlays of predictions on their photos: the predicted outline, false positives and false negatives in two colours.

Used by the out-of-fold report's gallery of the worst photos, and at each validation by
carvana.training.callbacks.ValidationOverlays, which logs the same few validation photos to TensorBoard.
"""

import cv2
import numpy as np

FP_COLOUR = (255, 0, 0)  # RGB red: car predicted where there is none
FN_COLOUR = (0, 0, 255)  # RGB blue: car the prediction missed
OUTLINE_COLOUR = (0, 200, 0)  # RGB green: the predicted car's outline


def draw_errors(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB photo, HxW {0,1} pred and truth -> size=(h, w) RGB tile, FP pixels red, FN pixels blue."""
    h, w = size
    tile = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    for error, colour in ((pred > truth, FP_COLOUR), (truth > pred, FN_COLOUR)):
        # any error pixel under a tile pixel colours it: a one-pixel edge error stays visible at 1/5 scale
        shrunk = cv2.resize(error.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0
        tile[shrunk] = colour
    return tile


def draw_outline(tile: np.ndarray, pred: np.ndarray) -> None:
    """Draw the outline of an HxW {0,1} pred, resized to the tile, two pixels wide on an RGB tile (in place)."""
    small = cv2.resize(pred, tile.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(small, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tile, contours, -1, OUTLINE_COLOUR, 2)  # a 1-pixel line is lost beside red and blue


def label(tile: np.ndarray, lines: list[str]) -> None:
    """Write `lines` white on a darkened band at the top of an RGB tile, and frame the tile (in place)."""
    band = tile[: 8 + 18 * len(lines)]
    band[:] = band // 3  # Carvana's studio background is near white: white text needs a dark band
    for i, text in enumerate(lines):
        cv2.putText(tile, text, (6, 18 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.rectangle(tile, (0, 0), (tile.shape[1] - 1, tile.shape[0] - 1), (64, 64, 64), 1)


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, width: int, lines: list[str]) -> np.ndarray:
    """An HxWx3 RGB photo with its HxW {0,1} pred and truth -> an RGB tile `width` wide: errors, outline, caption."""
    height = round(image.shape[0] * width / image.shape[1])
    tile = draw_errors(image, pred, truth, (height, width))
    draw_outline(tile, pred.astype(np.uint8))
    label(tile, lines)
    return tile
