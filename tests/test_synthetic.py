"""The synthetic set must have Carvana's exact layout and formats, be deterministic, and never be left half written."""

import csv
import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carvana import CarvanaError
from carvana.data.io import read_image, read_mask
from carvana.data.rle import rle_decode
from carvana.synthetic import dataset as synthetic
from carvana.synthetic import is_complete, lowpoly, make_dataset, turntable

SHAPE = (64, 96)  # non-square: a transposed axis cannot pass
REAL = Path(__file__).parents[2] / "shared" / "data"


def rows(path: Path) -> list[dict]:
    """The rows of a csv as dicts."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def files(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("syn") / "set", train_cars=2, test_cars=1, size=SHAPE, seed=0)


def test_layout_and_names(tiny: Path) -> None:
    meta = rows(tiny / "metadata.csv")
    train_ids = [m["id"] for m in meta if m["train"] == "TRUE"]
    test_ids = [m["id"] for m in meta if m["train"] == "FALSE"]
    assert len(train_ids) == 2 and len(test_ids) == 1
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in train_ids + test_ids)
    angles = [f"{a:02d}" for a in range(1, 17)]
    assert sorted(p.name for p in (tiny / "train").iterdir()) == sorted(
        f"{i}_{a}.jpg" for i in train_ids for a in angles)
    assert sorted(p.name for p in (tiny / "train_masks").iterdir()) == sorted(
        f"{i}_{a}_mask.gif" for i in train_ids for a in angles)
    assert sorted(p.name for p in (tiny / "test").iterdir()) == [f"{test_ids[0]}_{a}.jpg" for a in angles]
    assert {p.name for p in tiny.parent.iterdir()} == {"set"}  # no temporary directory left beside it
    assert is_complete(tiny)


def test_photos_and_masks_read_back(tiny: Path) -> None:
    for gif in (tiny / "train_masks").iterdir():
        with Image.open(gif) as img:
            assert img.format == "GIF" and img.mode == "P"
            assert set(np.unique(np.asarray(img))) == {0, 1}  # palette indices, as Kaggle's
        assert read_mask(gif).shape == SHAPE
    for jpg in list((tiny / "train").iterdir()) + list((tiny / "test").iterdir()):
        image = read_image(jpg)
        assert image.shape == (*SHAPE, 3) and image.dtype == np.uint8
    image = read_image(next((tiny / "train").iterdir()))
    assert image[: SHAPE[0] // 6].mean() > 200  # the white studio backdrop at the top


def test_train_masks_csv_decodes_to_the_gifs(tiny: Path) -> None:
    table = rows(tiny / "train_masks.csv")
    assert list(table[0]) == ["img", "rle_mask"]
    assert sorted(r["img"] for r in table) == sorted(p.name for p in (tiny / "train").iterdir())
    for r in table:
        gif = tiny / "train_masks" / r["img"].replace(".jpg", "_mask.gif")
        np.testing.assert_array_equal(rle_decode(r["rle_mask"], SHAPE), read_mask(gif))


def test_sample_submission_lists_the_test_photos(tiny: Path) -> None:
    table = rows(tiny / "sample_submission.csv")
    assert [r["img"] for r in table] == sorted(p.name for p in (tiny / "test").iterdir())
    assert {r["rle_mask"] for r in table} == {"1 1"}


@pytest.mark.skipif(not (REAL / "metadata.csv").exists(), reason=f"the real Kaggle files are not at {REAL}")
def test_metadata_matches_the_real_format(tiny: Path) -> None:
    real = rows(REAL / "metadata.csv")
    ours = rows(tiny / "metadata.csv")
    assert list(ours[0]) == list(real[0])
    assert (tiny / "metadata.csv").read_bytes().count(b"\r\n") == len(ours) + 1  # CRLF, as the real file
    colour_map = {r["color"]: r["simplified_color"] for r in real}
    for r in ours:
        assert r["train"] in ("TRUE", "FALSE") and r["size"] in synthetic.SIZE_NAMES
        assert colour_map[r["color"]] == r["simplified_color"]
        assert r["stratifeature"] == f"{r['size']}-{'White' if r['simplified_color'] == 'White' else 'Non-white'}"
        masks = [read_mask(p) for p in (tiny / "train_masks").glob(f"{r['id']}_*_mask.gif")]
        assert not masks or int(r["area"]) == sum(int(m.sum()) for m in masks)  # area: mask pixels over 16 photos


def test_size_classes_are_the_real_bins() -> None:
    # the real file's boundaries: very small starts at 5,704,978 and very very small ends at 5,689,995
    assert synthetic._size_class(5_689_995, synthetic.REF_SHAPE) == "very very small"
    assert synthetic._size_class(5_704_978, synthetic.REF_SHAPE) == "very small"
    assert synthetic._size_class(14_361_358, synthetic.REF_SHAPE) == "very very large"
    assert synthetic._size_class(8_000_000 // 100, (128, 192)) == "small"  # rescaled to 1280x1918


def test_same_seed_same_bytes_other_seed_other_set(tiny: Path, tmp_path: Path) -> None:
    again = make_dataset(tmp_path / "again", train_cars=2, test_cars=1, size=SHAPE, seed=0)
    assert files(again) == files(tiny)
    other = files(make_dataset(tmp_path / "other", train_cars=2, test_cars=1, size=SHAPE, seed=1))
    assert other.keys() != files(tiny).keys() and other["metadata.csv"] != files(tiny)["metadata.csv"]


def test_silhouette_changes_with_the_angle(tiny: Path) -> None:
    for gif in (tiny / "train_masks").glob("*_01_mask.gif"):
        front, side = read_mask(gif).astype(bool), read_mask(str(gif).replace("_01_", "_05_")).astype(bool)
        assert (front & side).sum() / (front | side).sum() < 0.8
        assert side.sum() > front.sum()  # a car is longer than wide


def test_mask_covers_a_plausible_part_of_the_photo(tiny: Path) -> None:
    fractions = [read_mask(p).mean() for p in sorted((tiny / "train_masks").iterdir())]
    assert 0.05 < min(fractions) and max(fractions) < 0.6
    assert 0.1 < np.mean(fractions) < 0.45


def test_thin_antenna_is_in_the_mask_and_the_shadow_is_not() -> None:
    car = lowpoly.sample_car("0" * 12, np.random.default_rng(0))

    def side_view(antenna_px: int) -> tuple[np.ndarray, np.ndarray]:
        with_antenna = dataclasses.replace(car, antenna_px=antenna_px)
        parts = lowpoly.car_parts(with_antenna)
        return turntable.render_photo(with_antenna, parts, 5, turntable.REF_SHAPE, np.random.default_rng(0))

    _, plain = side_view(0)
    image, mask = side_view(2)
    antenna = mask.astype(bool) & ~plain.astype(bool)
    assert antenna.sum() > 50 and antenna.sum(axis=1).max() <= 5  # a line 1-3 px thick, not a blob
    studio = turntable._studio(turntable.REF_SHAPE).astype(int)
    shadow = (studio.mean(axis=2) - image.astype(int).mean(axis=2) > 30) & (mask == 0)
    assert shadow.sum() > 1000  # the floor is darkened under the car, outside the mask


def test_refuses_an_existing_root_and_overwrites_on_request(tiny: Path, tmp_path: Path) -> None:
    before = files(tiny)
    with pytest.raises(CarvanaError, match="delete it"):
        make_dataset(tiny, train_cars=2, test_cars=1, size=SHAPE, seed=0)
    assert files(tiny) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CarvanaError, match="not empty"):
        make_dataset(foreign, train_cars=1, test_cars=0, size=SHAPE, seed=0)
    assert (foreign / "notes.txt").read_text() == "mine"
    root = make_dataset(tmp_path / "set", train_cars=1, test_cars=1, size=SHAPE, seed=0)
    make_dataset(root, train_cars=1, test_cars=0, size=SHAPE, seed=5, overwrite=True)
    assert is_complete(root) and not list((root / "test").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "set"]


def test_an_interrupted_run_leaves_no_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_write(path: Path, mask: np.ndarray) -> None:
        calls.append(path)
        if len(calls) == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_mask_gif", failing_write)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(tmp_path / "set", train_cars=2, test_cars=1, size=SHAPE, seed=0)
    assert len(calls) == 20 and list(tmp_path.iterdir()) == []


def test_a_set_made_meanwhile_by_another_process_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, write_set = tmp_path / "set", synthetic._write_set

    def racing(out: Path, *args: object) -> None:
        write_set(out, *args)
        shutil.copytree(out, root)  # another DDP rank finishes first
        (root / "marker").touch()

    monkeypatch.setattr(synthetic, "_write_set", racing)
    assert make_dataset(root, train_cars=1, test_cars=0, size=SHAPE, seed=0) == root
    assert (root / "marker").exists() and is_complete(root) and sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_is_complete_spots_a_missing_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "set", train_cars=1, test_cars=1, size=SHAPE, seed=0)
    assert is_complete(root) and not is_complete(tmp_path / "nothing")
    next((root / "test").iterdir()).unlink()
    assert not is_complete(root)


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(CarvanaError, match="training car"):
        make_dataset(tmp_path / "set", train_cars=0, test_cars=1, size=SHAPE, seed=0)
    with pytest.raises(CarvanaError, match="too small"):
        make_dataset(tmp_path / "set", train_cars=1, test_cars=1, size=(16, 96), seed=0)
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "carvana.synthetic", f"root={tmp_path / 'set'}", "train_cars=1", "test_cars=1",
            "height=64", "width=96", "seed=3"]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "set") and is_complete(tmp_path / "set")
    again = subprocess.run(args, capture_output=True, text=True, check=False)
    assert again.returncode != 0 and again.stderr.strip().startswith("error:") and "Traceback" not in again.stderr


def test_the_renderer_is_imported_only_when_asked_for() -> None:
    """Training and prediction on real data do not import the synthetic renderer (a sixth of the package)."""
    code = ("import sys, carvana.training.run, carvana.predict.run, carvana.submission, carvana.report.oof\n"
            "print(sorted(m for m in sys.modules if m.startswith('carvana.synthetic')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
