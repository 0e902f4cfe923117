"""Kaggle's run-length encoding: row-major (C order) flattening, 1-indexed starts, "start length" pairs."""

import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    """Encode an HxW mask (nonzero = car) as Kaggle's RLE string; an empty mask gives ""."""
    flat = mask.reshape(-1).astype(bool, copy=False)
    # a False sentinel on each side makes runs touching the first or last pixel close properly
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    if edges.size == 0:
        return ""
    edges[1::2] -= edges[::2]
    edges[::2] += 1
    return " ".join(map(str, edges.tolist()))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode Kaggle's RLE string into an HxW uint8 mask in {0, 1}."""
    h, w = shape
    flat = np.zeros(h * w + 1, dtype=np.int8)
    if isinstance(rle, str) and rle.strip():
        pairs = np.asarray(rle.split(), dtype=np.int64)
        if pairs.size % 2:
            raise ValueError(f"RLE has an odd number of values ({pairs.size}): expected 'start length' pairs")
        starts, lengths = pairs[::2] - 1, pairs[1::2]
        if starts.min() < 0 or (starts + lengths).max() > h * w:
            raise ValueError(f"RLE runs fall outside a {h}x{w} mask")
        np.add.at(flat, starts, 1)
        np.add.at(flat, starts + lengths, -1)
    return (np.cumsum(flat[:-1]) > 0).astype(np.uint8).reshape(h, w)
