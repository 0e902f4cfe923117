"""Kaggle's RLE: hand-made strings, round trips, edge pixels, C order, and the real Carvana GIF masks."""

from pathlib import Path

import numpy as np
import pytest

from carvana.data.io import read_mask
from carvana.data.rle import parse_rle, rle_decode, rle_encode

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAPE = (64, 96)  # non-square: a transposed axis cannot pass


def naive_rle(mask: np.ndarray) -> str:
    """A pixel-by-pixel reference encoder: C order, 1-indexed starts, 'start length' pairs."""
    values, runs, start = mask.reshape(-1).tolist(), [], None
    for i, v in enumerate([*values, 0]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs += [start + 1, i - start]
            start = None
    return " ".join(map(str, runs))


def test_hand_made_2x3():
    mask = np.array([[0, 1, 1], [1, 0, 1]], dtype=np.uint8)
    # row-major: 0 1 1 | 1 0 1 -> pixels 2, 3, 4 and 6 (1-indexed)
    assert rle_encode(mask) == "2 3 6 1"
    np.testing.assert_array_equal(rle_decode("2 3 6 1", (2, 3)), mask)


def test_decode_is_c_order_not_fortran():
    expected = np.zeros((3, 4), dtype=np.uint8)
    expected[0, 0:3] = 1  # pixels 1..3: the first row
    expected[2, 1:3] = 1  # pixels 10..11: 0-based 9, 10 -> row 2, columns 1 and 2
    decoded = rle_decode("1 3 10 2", (3, 4))
    np.testing.assert_array_equal(decoded, expected)
    assert decoded.dtype == np.uint8
    assert not np.array_equal(decoded, expected.T.reshape(3, 4))


@pytest.mark.parametrize("density", [0.001, 0.05, 0.5, 0.95, 0.999])
def test_round_trip_random(density: float):
    rng = np.random.default_rng(int(density * 1000))
    for _ in range(10):
        mask = rng.random(SHAPE) < density
        rle = rle_encode(mask)
        assert rle == naive_rle(mask)
        np.testing.assert_array_equal(rle_decode(rle, SHAPE), mask)


def test_dtypes_and_views_encode_alike():
    mask = np.random.default_rng(1).random(SHAPE) < 0.3
    expected = naive_rle(mask)
    for variant in (mask.astype(np.uint8), mask.astype(np.uint8) * 255, mask.astype(np.float32), mask.astype(np.int64)):
        assert rle_encode(variant) == expected
    # a transposed view is encoded in its own C order, not in the memory order underneath
    assert rle_encode(mask.T) == naive_rle(np.ascontiguousarray(mask.T))


def test_first_last_empty_full():
    h, w = SHAPE
    mask = np.zeros(SHAPE, dtype=bool)
    assert rle_encode(mask) == ""
    np.testing.assert_array_equal(rle_decode("", SHAPE), mask)
    mask[0, 0] = mask[-1, -1] = True
    assert rle_encode(mask) == f"1 1 {h * w} 1"
    np.testing.assert_array_equal(rle_decode(f"1 1 {h * w} 1", SHAPE), mask)
    assert rle_encode(np.ones(SHAPE, dtype=np.uint8)) == f"1 {h * w}"
    assert rle_decode(f"1 {h * w}", SHAPE).all()
    # a run across a row end continues on the next row
    mask = np.zeros(SHAPE, dtype=bool)
    mask[0, -2:] = mask[1, :3] = True
    assert rle_encode(mask) == f"{w - 1} 5"


@pytest.mark.parametrize("size", [1, 7, 8, 9, 63, 64, 65, 1000])
def test_lengths_around_word_boundaries(size: int):
    rng = np.random.default_rng(size)
    for density in (0.0, 0.5, 1.0):
        mask = rng.random((1, size)) < density
        assert rle_encode(mask) == naive_rle(mask)


def test_nan_decodes_empty_and_bad_strings_raise():
    assert not rle_decode(float("nan"), (2, 3)).any()  # pandas reads an empty rle_mask cell as NaN
    for bad in ["1", "0 2", "2 0", "4 2 1 1", "1 3 3 1", "1 7", "1 x", "1,2"]:
        with pytest.raises(ValueError):
            rle_decode(bad, (2, 3))
    starts, lengths = parse_rle("2 3 6 1", 6)
    assert starts.tolist() == [2, 6] and lengths.tolist() == [3, 1]


def test_real_gif_masks_round_trip():
    masks = sorted((SHARED_DATA / "real" / "train_masks").glob("*_mask.gif"))
    if not masks:
        pytest.skip(f"the real Carvana masks are not at {SHARED_DATA / 'real' / 'train_masks'}")
    for path in masks:
        mask = read_mask(path)
        assert mask.shape == (1280, 1918)
        rle = rle_encode(mask)
        np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
        starts, lengths = parse_rle(rle, mask.size)
        assert lengths.sum() == mask.sum()
        # C order: the first run starts on the top row of the car, at its left-most pixel in that row
        top = np.flatnonzero(mask.any(axis=1))[0]
        assert divmod(int(starts[0]) - 1, 1918) == (top, np.flatnonzero(mask[top])[0])
        # the seed's way (padded pixels, np.where, str join) agrees on real masks
        pixels = np.concatenate([[0], mask.reshape(-1), [0]])
        runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
        runs[1::2] -= runs[::2]
        assert rle == " ".join(str(x) for x in runs)
