"""The out-of-fold report: Dice tables against hand and brute-force computations, the gallery, bad inputs."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from carvana.io import write_image, write_mask_gif, write_probs8
from carvana.report import FN_COLOUR, FP_COLOUR, THRESHOLDS, draw_errors, main, write_report
from tests.conftest import run_module

SIZE = (32, 48)  # h, w: non-square, so a transposed axis cannot pass
PHOTOS = [("aaaa00000001", 1), ("aaaa00000001", 2), ("aaaa00000001", 3), ("bbbb00000002", 1), ("bbbb00000002", 16)]


def brute_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks, 1 when both are empty."""
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2 * (pred & truth).sum() / total


def write_photo(root: Path, oof: Path, name: str, truth: np.ndarray, probs: np.ndarray) -> None:
    """Photo, ground-truth GIF and predicted PNG of one `<car>_<NN>` name in the Carvana layout."""
    write_image(root / "train" / f"{name}.jpg", np.full((*truth.shape, 3), 128, np.uint8))
    write_mask_gif(root / "train_masks" / f"{name}_mask.gif", truth)
    write_probs8(oof / f"{name}.png", probs)


@pytest.fixture
def oof(tmp_path: Path) -> dict:
    """A data root with 5 photos of 2 cars plus an empty-mask car, and their noisy predictions in oof/."""
    root, oof_dir = tmp_path / "data", tmp_path / "oof"
    for d in (root / "train", root / "train_masks", oof_dir):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pairs = {}
    for car, angle in PHOTOS:
        truth = np.zeros(SIZE, np.uint8)
        top, left = rng.integers(2, 10), rng.integers(2, 16)
        truth[top : top + 16, left : left + 24] = 1
        # every value 0..255 occurs somewhere, so each threshold boundary (e.g. 51 = 0.2 * 255) is exercised
        probs = np.clip(truth * 160.0 + rng.normal(50, 60, SIZE), 0, 255).astype(np.uint8)
        pairs[f"{car}_{angle:02d}"] = (truth, probs)
    # no car and one stray pixel at 200: Dice 0 below threshold 200/255, 1 (two empty masks) above
    empty = np.zeros(SIZE, np.uint8)
    stray = empty.copy()
    stray[5, 7] = 200
    pairs["cccc00000003_05"] = (empty, stray)
    for name, (truth, probs) in pairs.items():
        write_photo(root, oof_dir, name, truth, probs)
    return {"root": root, "oof": oof_dir, "pairs": pairs}


def test_per_image_dice_by_hand(tmp_path: Path) -> None:
    root, oof_dir = tmp_path / "data", tmp_path / "oof"
    for d in (root / "train", root / "train_masks", oof_dir):
        d.mkdir(parents=True)
    truth = np.zeros(SIZE, np.uint8)
    truth[8:24, 10:30] = 1  # 16 x 20 = 320 car pixels
    probs = np.full(SIZE, 127, np.uint8)  # 127 <= 0.5 * 255: background
    probs[8:24, 14:34] = 128  # 320 predicted pixels, 16 x 16 = 256 of them on the car
    write_photo(root, oof_dir, "abcdef123456_07", truth, probs)
    tables = write_report(
        str(oof_dir), str(tmp_path / "out"), str(root / "train_masks"), str(root / "train"), threshold=0.5, worst=0
    )
    row = tables["per_image"].iloc[0]
    assert (row.image, row.car, row.angle) == ("abcdef123456_07.jpg", "abcdef123456", 7)
    assert row.dice == pytest.approx(2 * 256 / (320 + 320))
    on_disk = pd.read_csv(tmp_path / "out" / "per_image.csv", dtype={"car": str})
    assert on_disk.dice.iloc[0] == pytest.approx(0.8)
    assert not (tmp_path / "out" / "worst.png").exists()


def test_tables_match_brute_force(oof: dict, capsys: pytest.CaptureFixture) -> None:
    out = oof["oof"].parent / "report"
    main([f"oof_dir={oof['oof']}", f"data_root={oof['root']}", f"out_dir={out}", "threshold=0.4", "worst=2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out)

    pairs = oof["pairs"]
    expected = {name: brute_dice(probs > 0.4 * 255, truth > 0) for name, (truth, probs) in pairs.items()}
    per_image = pd.read_csv(out / "per_image.csv", dtype={"car": str})
    assert list(per_image.image) == [f"{n}.jpg" for n in sorted(pairs)]
    assert per_image.dice.to_numpy() == pytest.approx([expected[n] for n in sorted(pairs)])
    assert 0 < per_image.dice[:5].min() and per_image.dice.max() < 1  # errors everywhere: no trivial all-ones pass

    per_angle = pd.read_csv(out / "per_angle.csv")
    for angle in (1, 2, 3, 5, 16):
        dice = [d for n, d in expected.items() if int(n[-2:]) == angle]
        row = per_angle[per_angle.angle == angle].iloc[0]
        assert (row.dice, row.n) == (pytest.approx(np.mean(dice)), len(dice))
    assert list(per_angle.dice) == sorted(per_angle.dice)  # hardest first
    assert f"hardest_angles={per_angle.angle[0]:02d}:" in "\n".join(lines)

    per_car = pd.read_csv(out / "per_car.csv", dtype={"car": str}).set_index("car")
    for car in ("aaaa00000001", "bbbb00000002", "cccc00000003"):
        dice = [d for n, d in expected.items() if n.startswith(car)]
        assert per_car.loc[car, "dice"] == pytest.approx(np.mean(dice))
        assert per_car.loc[car, "n"] == len(dice)

    sweep = pd.read_csv(out / "thresholds.csv")
    assert sweep.threshold.to_numpy() == pytest.approx(THRESHOLDS)
    brute = [np.mean([brute_dice(p > t * 255, m > 0) for m, p in pairs.values()]) for t in THRESHOLDS]
    assert sweep.dice.to_numpy() == pytest.approx(brute)
    best = THRESHOLDS[int(np.argmax(brute))]
    assert f"best_threshold={best:.2f} mean_dice={max(brute):.5f}" in lines


def test_worst_gallery(oof: dict) -> None:
    out = oof["oof"].parent / "report"
    main([f"oof_dir={oof['oof']}", f"data_root={oof['root']}", f"out_dir={out}", "worst=5"])
    board = cv2.imread(str(out / "worst.png"))
    tile_h, tile_w = 256, 384  # 384 wide, the photos' 2:3 aspect
    assert board.shape == (2 * tile_h, 4 * tile_w, 3)  # 5 tiles: 4 columns, 2 rows
    filled = [
        board[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w].any() for r in range(2) for c in range(4)
    ]
    assert filled == [True] * 5 + [False] * 3

    main([f"oof_dir={oof['oof']}", f"data_root={oof['root']}", f"out_dir={out}", "worst=2"])
    assert cv2.imread(str(out / "worst.png")).shape == (tile_h, 2 * tile_w, 3)


def test_draw_errors_colours() -> None:
    image = np.full((4, 6, 3), 100, np.uint8)
    truth = np.zeros((4, 6), np.uint8)
    truth[1:3, 1:3] = 1
    pred = truth.copy()
    pred[0, 5] = 1  # false positive
    pred[2, 2] = 0  # false negative
    tile = draw_errors(image, pred, truth, (4, 6))
    assert tuple(tile[0, 5]) == FP_COLOUR
    assert tuple(tile[2, 2]) == FN_COLOUR
    assert (tile[1, 1] == 100).all() and (tile[3, 0] == 100).all()  # right and background pixels: the photo
    # a single-pixel error survives a 2x downscale
    big_pred = np.zeros((8, 12), np.uint8)
    big_pred[7, 0] = 1
    small = draw_errors(np.zeros((8, 12, 3), np.uint8), big_pred, np.zeros((8, 12), np.uint8), (4, 6))
    assert tuple(small[3, 0]) == FP_COLOUR and (small.reshape(-1, 3) == FP_COLOUR).all(1).sum() == 1


def test_missing_oof_dir_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = run_module("carvana.report", f"oof_dir={tmp_path / 'nope'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: oof_dir=")
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "holds no <car>_<NN>.png"),
        ("no_mask", "have no mask"),
        ("size", "but its mask"),
        ("no_photo", "is not in images_dir="),
        ("not_a_number", "worst=abc is not an integer"),
        ("unknown_key", "unknown key 'oof'"),
        ("not_key_value", "is not key=value"),
    ],
)
def test_bad_inputs_exit_2(oof: dict, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str) -> None:
    args = [f"oof_dir={oof['oof']}", f"data_root={oof['root']}"]
    if case == "empty":
        (tmp_path / "empty").mkdir()
        args[0] = f"oof_dir={tmp_path / 'empty'}"
    elif case == "no_mask":
        (oof["root"] / "train_masks" / "bbbb00000002_16_mask.gif").unlink()
    elif case == "size":
        write_probs8(oof["oof"] / "bbbb00000002_16.png", np.zeros((SIZE[1], SIZE[0]), np.uint8))
    elif case == "no_photo":
        (oof["root"] / "train" / "aaaa00000001_02.jpg").unlink()
    elif case == "not_a_number":
        args.append("worst=abc")
    elif case == "unknown_key":
        args.append("oof=x")
    else:
        args.append("worst")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (oof["oof"] / "report").exists()
