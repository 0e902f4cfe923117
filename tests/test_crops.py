"""Car crops: largest-component boxes, margin and multiple-of-32 rounding, clipping, crop/paste, bboxes.csv, CLI."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import run_module

from carvana import CarvanaError
from carvana.crops.__main__ import main
from carvana.data.boxes import car_bbox, cut_box, load_boxes, read_bboxes, write_bboxes
from carvana.data.io import read_mask, write_probs8

FULL = (1280, 1918)


def contains(box: tuple[int, int, int, int], y0: int, y1: int, x0: int, x1: int) -> bool:
    return box[0] <= y0 and y1 <= box[1] and box[2] <= x0 and x1 <= box[3]


def test_largest_component_wins():
    mask = np.zeros((256, 384), np.uint8)
    mask[10:20, 10:20] = 1  # 100 pixels
    mask[100:160, 200:300] = 1  # 6000 pixels: the car
    box = car_bbox(mask, margin=0, multiple=1)
    assert box == (100, 160, 200, 300)


def test_margin_and_multiple_rounding():
    mask = np.zeros((512, 768), np.uint8)
    mask[200:250, 300:410] = 1  # 50 x 110
    y0, y1, x0, x1 = car_bbox(mask, margin=32, multiple=32)
    assert (y1 - y0) % 32 == 0 and (x1 - x0) % 32 == 0
    assert contains((y0, y1, x0, x1), 200 - 32, 250 + 32, 300 - 32, 410 + 32)
    # 50 + 64 = 114 -> 128, 110 + 64 = 174 -> 192: the smallest multiples, grown evenly on both sides
    assert (y1 - y0, x1 - x0) == (128, 192)
    assert (y0, x0) == (161, 259)


def test_probs_with_threshold():
    probs = np.zeros((128, 192), np.uint8)
    probs[40:60, 50:100] = 200
    probs[0:100, 100:190] = 100  # touches the first blob, but below threshold 0.5 (127.5)
    assert car_bbox(probs, margin=0, multiple=1, threshold=0.5) == (40, 60, 50, 100)
    assert car_bbox(probs, margin=0, multiple=1, threshold=0.3) == (0, 100, 50, 190)


def test_clipped_at_the_border_of_a_non_square_photo():
    mask = np.zeros(FULL, np.uint8)
    mask[1200:1280, 1850:1918] = 1  # touches the bottom-right corner
    mask[0:30, 0:40] = 1  # a smaller blob in the top-left corner
    y0, y1, x0, x1 = car_bbox(mask, margin=32, multiple=32)
    assert 0 <= y0 < y1 <= 1280 and 0 <= x0 < x1 <= 1918
    assert (y1 - y0) % 32 == 0 and (x1 - x0) % 32 == 0
    # shifted inward, not shrunk: 80 + 64 -> 160 and 68 + 64 -> 160
    assert (y1 - y0, x1 - x0) == (160, 160)
    assert (y1, x1) == (1280, 1918)


def test_car_wider_than_any_multiple_window_gets_the_whole_side():
    mask = np.zeros(FULL, np.uint8)
    mask[500:700, 10:1910] = 1  # 1900 wide: no multiple of 32 <= 1918 holds it
    y0, y1, x0, x1 = car_bbox(mask, margin=32, multiple=32)
    assert (x0, x1) == (0, 1918)
    assert (y1 - y0) % 32 == 0 and contains((y0, y1, x0, x1), 468, 732, 10, 1910)


def test_margin_gives_way_before_the_car():
    mask = np.zeros(FULL, np.uint8)
    mask[500:700, 20:1880] = 1  # 1860 + 64 > 1888 = 59 * 32, the widest multiple window
    y0, y1, x0, x1 = car_bbox(mask, margin=32, multiple=32)
    assert x1 - x0 == 1888 and contains((y0, y1, x0, x1), 500, 700, 20, 1880)


def test_empty_mask_gives_the_whole_photo():
    assert car_bbox(np.zeros(FULL, np.uint8), margin=32, multiple=32) == (0, 1280, 0, 1918)


def test_random_boxes_hold_the_car_and_stay_inside():
    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width = rng.integers(40, 130, size=2)
        mask = np.zeros((height, width), np.uint8)
        y0, x0 = rng.integers(0, height - 1), rng.integers(0, width - 1)
        y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
        mask[y0:y1, x0:x1] = 1
        margin = int(rng.integers(0, 20))
        box = car_bbox(mask, margin=margin, multiple=16)
        assert contains(box, y0, y1, x0, x1), (mask.shape, (y0, y1, x0, x1), margin, box)
        assert 0 <= box[0] < box[1] <= height and 0 <= box[2] < box[3] <= width
        for start, end, lo, hi, side in ((box[0], box[1], y0, y1, height), (box[2], box[3], x0, x1, width)):
            fits = -(-(hi - lo) // 16) * 16 <= side
            assert (end - start) % 16 == 0 or ((start, end) == (0, side) and not fits), (box, side)
            if -(-(hi - lo + 2 * margin) // 16) * 16 <= side:  # room for the margin: it is kept, clipped to the photo
                assert start <= max(lo - margin, 0) and end >= min(hi + margin, side)


def test_real_masks_give_multiple_boxes_around_the_car(shared_data: Path):
    for path in sorted((shared_data / "real" / "train_masks").glob("*.gif"))[:4]:
        mask = read_mask(path)
        box = car_bbox(mask, margin=32, multiple=32)
        ys, xs = np.nonzero(mask)
        assert box[1] - box[0] < 1280 and (box[1] - box[0]) % 32 == 0 and (box[3] - box[2]) % 32 == 0
        # the largest component is nearly the whole car: few mask pixels fall outside the box
        assert cut_box(mask, box).sum() > 0.99 * mask.sum(), path.name
        # margin 32 on each side plus at most 31 of rounding
        assert box[1] - box[0] <= ys.max() + 1 - ys.min() + 64 + 31
        assert box[3] - box[2] <= xs.max() + 1 - xs.min() + 64 + 31


def test_box_cut_at_full_size():
    """Cutting a box out (carvana.data.boxes.cut_box, what training and prediction do with bboxes.csv) at 1918x1280."""
    rng = np.random.default_rng(1)
    box = (96, 1024, 1030, 1918)
    image = rng.integers(0, 256, size=(*FULL, 3), dtype=np.uint8)
    np.testing.assert_array_equal(cut_box(image, box), image[96:1024, 1030:1918])
    with pytest.raises(CarvanaError, match="does not fit a 1280x1918 photo"):
        cut_box(np.zeros(FULL, np.uint8), (0, 1280, 0, 1920))


def test_write_read_bboxes_round_trip(tmp_path: Path):
    preds = tmp_path / "preds"
    preds.mkdir()
    car = np.zeros((128, 192), np.uint8)
    car[40:60, 50:90] = 255
    write_probs8(preds / "aaa_01.png", car)
    write_probs8(preds / "aaa_02.png", np.zeros((128, 192), np.uint8))
    table = write_bboxes(preds, tmp_path / "bboxes.csv", threshold=0.5, margin=8, multiple=32, workers=2)
    assert list(table.columns) == ["img", "y_start", "y_end", "x_start", "x_end"]
    on_disk = pd.read_csv(tmp_path / "bboxes.csv")
    pd.testing.assert_frame_equal(on_disk, table)
    boxes = read_bboxes(tmp_path / "bboxes.csv")
    assert boxes == {"aaa_01.jpg": car_bbox(car, margin=8, multiple=32), "aaa_02.jpg": (0, 128, 0, 192)}
    # 20 + 16 -> 64 rows, 40 + 16 -> 64 columns, centred on the car
    assert boxes["aaa_01.jpg"] == (18, 82, 38, 102)
    assert not list(tmp_path.glob(".*tmp*"))


def test_missing_row_names_the_file(tmp_path: Path):
    path = tmp_path / "bboxes.csv"
    pd.DataFrame([["aaa_01.jpg", 0, 32, 0, 64]], columns=["img", "y_start", "y_end", "x_start", "x_end"]).to_csv(
        path, index=False
    )
    assert load_boxes(path, [Path("aaa_01.jpg")]) == {"aaa_01.jpg": (0, 32, 0, 64)}
    with pytest.raises(CarvanaError, match=f"bboxes.csv {path} has no row for 1 photo\\(s\\), first: aaa_02.jpg: "):
        load_boxes(path, [Path("aaa_01.jpg"), Path("aaa_02.jpg")])


def test_read_bboxes_refuses_missing_file_and_columns(tmp_path: Path):
    with pytest.raises(CarvanaError, match="does not exist"):
        read_bboxes(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("img,y_start,y_end\naaa_01.jpg,0,32\n")
    with pytest.raises(CarvanaError, match="lacks columns x_start, x_end"):
        read_bboxes(tmp_path / "bad.csv")


def test_cli_writes_bboxes(tmp_path: Path, capsys: pytest.CaptureFixture):
    write_probs8(tmp_path / "aaa_01.png", np.full((64, 96), 255, np.uint8))
    main([f"probs_dir={tmp_path}", f"output={tmp_path / 'b.csv'}", "margin=0"])
    lines = capsys.readouterr().out.splitlines()  # after the progress lines
    assert lines[-2:] == ["boxes=1 mean_box=64x96 max_box=64x96 (height x width)", str(tmp_path / "b.csv")]
    assert read_bboxes(tmp_path / "b.csv") == {"aaa_01.jpg": (0, 64, 0, 96)}


def test_cli_error_exits_2_in_one_line(tmp_path: Path):
    proc = run_module("carvana.crops", f"probs_dir={tmp_path / 'nope'}", "output=b.csv")
    assert proc.returncode == 2
    expected = f"error: probs_dir={tmp_path / 'nope'} is not a directory: give the first stage's PNG predictions"
    assert proc.stderr.strip().splitlines() == [expected]


def test_cli_old_keys_work_for_a_release_with_a_notice(tmp_path: Path):
    """pred_dir= and out= were renamed probs_dir= and output=: they still work, with one warning line each."""
    write_probs8(tmp_path / "aaa_01.png", np.full((64, 96), 255, np.uint8))
    proc = run_module("carvana.crops", f"pred_dir={tmp_path}", f"out={tmp_path / 'b.csv'}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["warning: pred_dir= is now probs_dir= (pred_dir= goes in the next release)",
                                        "warning: out= is now output= (out= goes in the next release)"]
    assert read_bboxes(tmp_path / "b.csv") == {"aaa_01.jpg": (0, 64, 0, 96)}
    assert "Traceback" not in proc.stderr + proc.stdout
