"""The report: Dice tables against hand and brute-force computations, the gallery, report.html, bad inputs."""

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import run_module
from PIL import Image

from carvana.data.io import write_image, write_mask_gif, write_probs8
from carvana.data.layout import CAR_GROUP, group_unit
from carvana.predict.manifest import settings
from carvana.report.__main__ import main
from carvana.report.oof import FN_COLOUR, FP_COLOUR, OUTLINE_COLOUR, THRESHOLDS, draw_errors, draw_outline, write_report

SIZE = (32, 48)  # h, w: non-square, so a transposed axis cannot pass
PREDICTED = {"tta": "none", "threshold": 0.5, "write": ["png"], "cutout_alpha": "probs", "cutout_colour": "blur"}
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
    tables = write_report(str(oof_dir), str(tmp_path / "out"), str(root / "train_masks"), str(root / "train"),
                          threshold=0.5, worst=0, workers=1, group=CAR_GROUP)
    row = tables["per_image"].iloc[0]
    assert (row.image, row.car, row.angle) == ("abcdef123456_07.jpg", "abcdef123456", 7)
    assert row.dice == pytest.approx(2 * 256 / (320 + 320))
    on_disk = pd.read_csv(tmp_path / "out" / "per_image.csv", dtype={"car": str})
    assert on_disk.dice.iloc[0] == pytest.approx(0.8)
    assert "1 photo of 1 car." in (tmp_path / "out" / "report.html").read_text()  # not '1 photos of 1 cars'
    assert not (tmp_path / "out" / "worst.png").exists()


def test_tables_match_brute_force(oof: dict, capsys: pytest.CaptureFixture) -> None:
    out = oof["oof"].parent / "report"
    main([f"probs_dir={oof['oof']}", f"data_root={oof['root']}", f"output_dir={out}", "threshold=0.4", "worst=2"])
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
    # the reported threshold scores the best mean Dice; not which of two near-equal thresholds wins (float noise)
    found = next(line for line in lines if line.startswith("best_threshold="))
    best, dice = (float(word.split("=")[1]) for word in found.split())
    assert dice == pytest.approx(max(brute), abs=1e-5)
    assert brute[int(np.abs(THRESHOLDS - best).argmin())] == pytest.approx(max(brute), abs=1e-5)


@pytest.mark.parametrize("group", [r"^([0-9a-f]+)_\d\d$", r"^(\w{12})_"])
def test_cars_are_told_by_the_names_not_by_the_regex_text(oof: dict, tmp_path: Path, group: str) -> None:
    """Carvana's grouping written as another regex still gives the per-car and per-angle tables, the same numbers."""
    args = (str(oof["oof"]), str(tmp_path / "out"), str(oof["root"] / "train_masks"), str(oof["root"] / "train"))
    written = write_report(*args, threshold=0.5, worst=0, workers=1, group=group)
    default = write_report(*args, threshold=0.5, worst=0, workers=1, group=CAR_GROUP)
    assert sorted(written) == ["per_angle", "per_car", "per_image", "thresholds"]
    assert written["per_image"].columns.tolist() == ["image", "car", "angle", "dice"]
    assert sorted(written["per_car"].car) == ["aaaa00000001", "bbbb00000002", "cccc00000003"]
    for name, table in default.items():
        pd.testing.assert_frame_equal(written[name], table)


def test_own_names_get_per_group_tables_under_the_car_regex(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Names that are not Kaggle's (<12 hex car id>_<angle>), grouped by the default regex CAR_GROUP: per group, no
    angle (not 'car chair, angle 1')."""
    root, oof_dir = tmp_path / "data", tmp_path / "oof"
    for d in (root / "train", root / "train_masks", oof_dir):
        d.mkdir(parents=True)
    truth = np.zeros(SIZE, np.uint8)
    truth[8:24, 10:30] = 1
    for name in ("chair_01", "chair_02", "vase_01"):
        write_photo(root, oof_dir, name, truth, truth * 200)
    main([f"probs_dir={oof_dir}", f"data_root={root}", f"output_dir={tmp_path / 'out'}", "worst=0"])
    assert "images=3 groups=2 mean_dice=1.00000 threshold=0.5" in capsys.readouterr().out.splitlines()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.csv")) == ["per_group.csv", "per_image.csv",
                                                                         "thresholds.csv"]
    assert pd.read_csv(tmp_path / "out" / "per_image.csv").columns.tolist() == ["image", "group", "dice"]
    assert pd.read_csv(tmp_path / "out" / "per_group.csv").group.tolist() == ["chair", "vase"]


def test_group_unit_reads_kaggle_names_grouped_by_their_car() -> None:
    kaggle = [Path("0cdf5b5d0ce1_05.jpg"), Path("0cdf5b5d0ce1_16.jpg"), Path("00087a6bd4dc_01.jpg")]
    cars = ["0cdf5b5d0ce1", "0cdf5b5d0ce1", "00087a6bd4dc"]
    assert group_unit(kaggle, cars) == "car"
    assert group_unit(kaggle, [p.stem for p in kaggle]) == "group"  # data.group=null: each photo alone
    assert group_unit([*kaggle, Path("extra_01.jpg")], [*cars, "extra"]) == "group"  # one other name: not Carvana's
    assert group_unit([Path("0CDF5B5D0CE1_05.jpg"), Path("0cdf5b5d0ce1_5.jpg")], ["0CDF5B5D0CE1", "0cdf5b5d0ce1"]) \
        == "group"


def test_worst_gallery(oof: dict) -> None:
    out = oof["oof"].parent / "report"
    main([f"probs_dir={oof['oof']}", f"data_root={oof['root']}", f"output_dir={out}", "worst=5"])
    board = cv2.imread(str(out / "worst.png"))
    tile_h, tile_w = 256, 384  # 384 wide, the photos' 2:3 aspect
    assert board.shape == (2 * tile_h, 4 * tile_w, 3)  # 5 tiles: 4 columns, 2 rows
    filled = [
        board[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w].any() for r in range(2) for c in range(4)
    ]
    assert filled == [True] * 5 + [False] * 3

    main([f"probs_dir={oof['oof']}", f"data_root={oof['root']}", f"output_dir={out}", "worst=2"])
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
    proc = run_module("carvana.report", f"probs_dir={tmp_path / 'nope'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: probs_dir=")
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "holds no predictions"),
        ("no_mask", "have no mask"),
        ("two_masks", "photo bbbb00000002_16.png has 2 masks in"),
        ("two_photos", "photos bbbb00000002_16.jpg and bbbb00000002_16.png in images_dir="),
        ("size", "but its mask"),
        ("no_photo", "is not in images_dir="),
        ("not_a_number", "worst=abc is not an integer"),
        ("unknown_key", "unknown key 'oof'"),
        ("not_key_value", "is not key=value"),
    ],
)
def test_bad_inputs_exit_2(oof: dict, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str) -> None:
    args = [f"probs_dir={oof['oof']}", f"data_root={oof['root']}"]
    if case == "empty":
        (tmp_path / "empty").mkdir()
        args[0] = f"probs_dir={tmp_path / 'empty'}"
    elif case == "no_mask":
        (oof["root"] / "train_masks" / "bbbb00000002_16_mask.gif").unlink()
    elif case == "two_masks":
        shutil.copy(oof["root"] / "train_masks" / "bbbb00000002_16_mask.gif", oof["root"] / "train_masks" /
                    "bbbb00000002_16.gif")
    elif case == "two_photos":
        write_image(oof["root"] / "train" / "bbbb00000002_16.png", np.zeros((*SIZE, 3), np.uint8))
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


def test_report_takes_the_data_root_and_group_predict_recorded(oof: dict) -> None:
    """probs_dir= alone: the masks come from the data root predict.py recorded in predict.json (not the config's
    default root), the groups from the checkpoint's data.group it recorded."""
    names = sorted(p.name.replace(".png", ".jpg") for p in oof["oof"].glob("*.png"))
    recorded = settings(PREDICTED, [], ["input32x48"],
                        {"data_root": str(oof["root"]), "group": r"^(\w{4})", "images_dir": None, "masks_dir": None})
    (oof["oof"] / "predict.json").write_text(json.dumps({"entries": [{"settings": recorded, "photos": names}]}))
    out = oof["oof"].parent / "report"
    main([f"probs_dir={oof['oof']}", f"output_dir={out}", "worst=0"])
    per_image = pd.read_csv(out / "per_image.csv")
    truth = {name: brute_dice(probs > 0.5 * 255, t > 0) for name, (t, probs) in oof["pairs"].items()}
    assert per_image.dice.to_numpy() == pytest.approx([truth[n] for n in sorted(truth)])
    assert sorted(pd.read_csv(out / "per_group.csv").group) == ["aaaa", "bbbb", "cccc"]


def test_masks_whose_alpha_is_the_object_are_scored_by_their_alpha(oof: dict, capsys: pytest.CaptureFixture) -> None:
    """White + alpha and black + alpha PNG masks (background-removal sets): scored against the alpha, and the photo's
    folder's other files are named in one warning line."""
    masks = oof["root"] / "train_masks"
    for name, colour in (("aaaa00000001_02", 255), ("bbbb00000002_01", 0)):
        truth = oof["pairs"][name][0]
        (masks / f"{name}_mask.gif").unlink()
        Image.fromarray(np.dstack([np.full((*SIZE, 3), colour, np.uint8), truth * 255])).save(masks / f"{name}.png")
    (oof["root"] / "train" / "notes.txt").touch()
    out = oof["oof"].parent / "report"
    main([f"probs_dir={oof['oof']}", f"data_root={oof['root']}", f"output_dir={out}", "worst=2"])
    per_image = pd.read_csv(out / "per_image.csv").set_index("image").dice
    for name, (truth, probs) in oof["pairs"].items():
        assert per_image[f"{name}.jpg"] == pytest.approx(brute_dice(probs > 0.5 * 255, truth > 0)), name
    err = capsys.readouterr().err
    assert err == f"warning: 1 file(s) in {oof['root'] / 'train'} left out, not photos (.jpg, .jpeg, .png, .tif, " \
                  ".tiff): notes.txt\n", err


def test_photos_predicted_without_masks_are_named_as_such(oof: dict, capsys: pytest.CaptureFixture) -> None:
    """predict.py input_dir= records no masks_dir: the report says the photos have no masks, not that a default
    train_masks folder is missing; masks_dir= given scores them."""
    names = sorted(p.name.replace(".png", ".jpg") for p in oof["oof"].glob("*.png"))
    (oof["root"] / "train_masks").rename(oof["root"] / "their_masks")
    recorded = settings(PREDICTED, [], ["input32x48"], {"data_root": str(oof["root"]), "group": None,
                                                        "images_dir": str(oof["root"] / "train"), "masks_dir": None})
    (oof["oof"] / "predict.json").write_text(json.dumps({"entries": [{"settings": recorded, "photos": names}]}))
    with pytest.raises(SystemExit) as exit_info:
        main([f"probs_dir={oof['oof']}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: probs_dir={oof['oof']} holds predictions of photos without masks (input_dir="
                          f"{oof['root'] / 'train'}; ") and "give masks_dir=" in err and "does not exist" not in err
    main([f"probs_dir={oof['oof']}", f"masks_dir={oof['root'] / 'their_masks'}", "worst=0"])
    assert len(pd.read_csv(oof["oof"] / "report" / "per_image.csv")) == len(names)


class Page(HTMLParser):
    """The parts of report.html the tests read: section ids, tables by id (rows of cell texts), <img>s, captions."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections, self.tables, self.best, self.images, self.captions = [], {}, {}, [], []
        self.table, self.cell, self.caption = None, None, None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "table":
            self.table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self.table is not None:
            self.table.append([])
            if attrs.get("class") == "best":
                self.best[next(k for k, v in self.tables.items() if v is self.table)] = len(self.table) - 1
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "figcaption":
            self.caption = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.table = None
        elif tag in ("td", "th"):
            self.table[-1].append(self.cell)
            self.cell = None
        elif tag == "figcaption":
            self.captions.append(self.caption)
            self.caption = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell += data
        if self.caption is not None:
            self.caption += data


def decode_uri(uri: str) -> np.ndarray:
    """A data:image/png;base64 URI -> its decoded HxWx3 BGR image."""
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    return cv2.imdecode(np.frombuffer(base64.b64decode(uri[len(prefix) :]), np.uint8), cv2.IMREAD_COLOR)


def csv_rows(frame: pd.DataFrame, formats: dict) -> list[list[str]]:
    """A CSV's rows as the page must show them: each column through its format, str otherwise."""
    return [[formats.get(c, str)(v) for c, v in zip(frame.columns, row)] for row in frame.itertuples(index=False)]


def five(x: float) -> str:
    return f"{x:.5f}"


def test_html_report_holds_the_csvs_numbers(oof: dict) -> None:
    out = oof["oof"].parent / "report"
    main([f"probs_dir={oof['oof']}", f"data_root={oof['root']}", f"output_dir={out}", "threshold=0.4", "worst=3"])
    text = (out / "report.html").read_text()
    page = Page(text)
    assert page.sections == ["summary", "angles", "cars", "thresholds", "histogram", "worst"]
    # self-contained: no scripts, links or fetched resources, every image inline
    assert "<script" not in text and "<link" not in text and "url(" not in text
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)

    per_image = pd.read_csv(out / "per_image.csv", dtype={"car": str})
    dice = per_image.dice.to_numpy()
    header, values = page.tables["summary-table"]
    assert header == ["photos", "cars", "mean", "std", "min", "p5", "p25", "p50", "p75", "p95", "max"]
    expected = [len(dice), 3, dice.mean(), dice.std(ddof=1), dice.min(), *np.percentile(dice, [5, 25, 50, 75, 95]),
                dice.max()]
    assert values == [str(v) for v in expected[:2]] + [five(v) for v in expected[2:]]

    formats = {"dice": five, "threshold": "{:.2f}".format}
    per_angle = pd.read_csv(out / "per_angle.csv")
    assert page.tables["angle-table"] == [list(per_angle.columns), *csv_rows(per_angle, formats)]
    per_car = pd.read_csv(out / "per_car.csv", dtype={"car": str})
    assert page.tables["car-table"] == [list(per_car.columns), *csv_rows(per_car, formats)]
    sweep = pd.read_csv(out / "thresholds.csv")
    assert page.tables["threshold-table"] == [list(sweep.columns), *csv_rows(sweep, formats)]
    best = int(sweep.dice.argmax())
    assert page.best == {"threshold-table": best + 1}  # + 1: the header row
    assert f"Best threshold <b>{sweep.threshold[best]:.2f}</b>: mean Dice <b>{five(sweep.dice[best])}</b>" in text

    check_gallery(page, per_image, oof["pairs"])


def check_gallery(page: Page, per_image: pd.DataFrame, pairs: dict) -> None:
    """The four figures, then the 3 worst photos' overlays in order, each showing its errors and predicted outline."""
    worst = per_image.sort_values(["dice", "image"]).head(3)
    assert page.captions == [f"{name} dice {five(d)}" for name, d in zip(worst.image, worst.dice)]
    alts = [img["alt"] for img in page.images]
    assert alts == ["Dice by angle", "Dice by car", "Threshold sweep", "Histogram of per-photo Dice", *worst.image]
    sizes = [decode_uri(img["src"]).shape for img in page.images]
    assert all(h > 200 and w > 400 for h, w, _ in sizes[:4]), sizes  # matplotlib figures, not empty stubs
    assert sizes[4:] == [(256, 384, 3)] * 3  # the worst.png tiles: 384 wide, the photos' 2:3 aspect
    for name, img in zip(worst.image, page.images[4:]):  # each overlay shows its errors and the predicted outline
        truth, probs = pairs[name.removesuffix(".jpg")]
        pred = probs > 0.4 * 255
        rgb = cv2.cvtColor(decode_uri(img["src"]), cv2.COLOR_BGR2RGB).reshape(-1, 3)
        shown = [bool((rgb == colour).all(1).any()) for colour in (FP_COLOUR, FN_COLOUR, OUTLINE_COLOUR)]
        assert shown == [bool((pred & (truth == 0)).any()), bool((~pred & (truth > 0)).any()), True], name


def test_html_report_without_gallery(oof: dict) -> None:
    out = oof["oof"].parent / "report"
    main([f"probs_dir={oof['oof']}", f"data_root={oof['root']}", f"output_dir={out}", "worst=0"])
    page = Page((out / "report.html").read_text())
    assert len(page.images) == 4 and page.captions == [] and "worst" in page.sections
    assert not (out / "worst.png").exists()


def test_draw_outline() -> None:
    tile = np.full((8, 12, 3), 100, np.uint8)
    pred = np.zeros((16, 24), np.uint8)
    pred[4:12, 8:20] = 1  # tile rows 2..5, columns 4..9
    draw_outline(tile, pred)
    outline = (tile == OUTLINE_COLOUR).all(-1)
    assert outline[2, 4:10].all() and outline[5, 4:10].all() and outline[2:6, 4].all() and outline[2:6, 9].all()
    assert not outline[:, :3].any() and not outline[:, 11:].any() and not outline[7].any()  # only around the car


METRICS_CSV = """epoch,lr-Adam,step,train_loss_epoch,train_loss_step,val_dice,val_loss
,0.001,0,,,,
0,,1,,0.61,,
0,,3,,0.45,,
0,,3,,,0.81,0.30
0,,3,0.52,,,
,0.0005,4,,,,
1,,5,,0.40,,
1,,7,,0.33,,
1,,7,,,0.93456789,0.21
1,,7,0.35,,,
,0.0001,8,,,,
2,,9,,0.30,,
2,,11,,0.28,,
2,,11,,,0.90,0.25
2,,11,0.29,,,
"""


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A train.py run folder: Lightning's CSVLogger layout (LR rows without an epoch), best epoch 1 of 3, its config."""
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / "checkpoints").mkdir()
    (run / "csv" / "metrics.csv").write_text(METRICS_CSV)
    (run / ".hydra" / "config.yaml").write_text("model:\n  encoder_name: mobilenet_v2  # <b>not markup</b>\n")
    (run / ".hydra" / "overrides.yaml").write_text("- trainer.max_epochs=3\n")
    (run / "checkpoints" / "last.ckpt").touch()
    return run


def test_run_report(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    main([f"run_dir={run_dir}"])
    lines = capsys.readouterr().out.strip().splitlines()
    out = run_dir / "report"
    assert lines == ["epochs=3 best_epoch=1 val_dice=0.93457", f"report={out / 'report.html'}", str(out)]
    epochs = pd.read_csv(out / "epochs.csv")
    assert list(epochs.columns) == ["epoch", "step", "train_loss_epoch", "val_loss", "val_dice", "lr-Adam"]
    assert epochs.values.tolist() == [[0, 3, 0.52, 0.30, 0.81, 0.001], [1, 7, 0.35, 0.21, 0.93456789, 0.0005],
                                      [2, 11, 0.29, 0.25, 0.90, 0.0001]]  # each epoch's LR: the one set at its start

    text = (out / "report.html").read_text()
    page = Page(text)
    assert page.sections == ["curves", "epochs", "config"]
    formats = {c: five for c in ("train_loss_epoch", "val_loss", "val_dice")} | {"lr-Adam": "{:.4g}".format}
    assert page.tables["epoch-table"] == [list(epochs.columns), *csv_rows(epochs, formats)]
    assert page.best == {"epoch-table": 2}  # epoch 1, after the header row
    assert "Best epoch <b>1</b> (step 7): val_dice <b>0.93457</b>" in text
    assert "encoder_name: mobilenet_v2  # &lt;b&gt;not markup&lt;/b&gt;" in text and "- trainer.max_epochs=3" in text
    assert "last.ckpt" in text
    [curves] = page.images
    h, w, _ = decode_uri(curves["src"]).shape
    assert w > 1000 and h > 300, (h, w)


def test_run_report_without_validation(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv").drop(columns=["val_dice", "val_loss"])
    metrics.dropna(subset=["lr-Adam", "train_loss_step", "train_loss_epoch"], how="all").to_csv(
        run_dir / "csv" / "metrics.csv", index=False)  # limit_val_batches=0: no validation rows
    main([f"run_dir={run_dir}"])
    assert capsys.readouterr().out.splitlines()[0] == "epochs=3 no val_dice logged"
    epochs = pd.read_csv(run_dir / "report" / "epochs.csv")
    assert epochs.train_loss_epoch.tolist() == [0.52, 0.35, 0.29] and epochs.val_dice.isna().all()
    text = (run_dir / "report" / "report.html").read_text()
    assert "No val_dice logged: no validation ran, so no best epoch." in text and Page(text).best == {}


def test_run_report_of_a_real_training(trained_run: dict, tmp_path: Path) -> None:
    main([f"run_dir={trained_run['out']}", f"output_dir={tmp_path}"])
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    assert epochs.epoch.tolist() == [0] and epochs.step.tolist() == [7]  # 8 steps of 4 photos
    assert epochs.val_dice[0] == pytest.approx(trained_run["dice"], abs=1e-4)
    assert {"train_loss_epoch", "val_loss", "lr-Adam"} <= set(epochs.columns) and epochs.notna().all().all()
    page = Page((tmp_path / "report.html").read_text())
    assert page.best == {"epoch-table": 1} and len(page.images) == 1
    assert "encoder_name: mobilenet_v2" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_csv", "has no csv/metrics.csv"),
        ("empty_dir", "has no csv/metrics.csv"),
        ("missing_dir", "does not exist"),
        ("empty_csv", "is not a CSV log"),
        ("header_only", "holds no logged epoch"),
        ("both", "not both"),
        ("oof_key", "threshold= is for probs_dir= reports"),
        ("neither", "probs_dir= (predict.py predict_on_val=true output) or run_dir="),
    ],
)
def test_bad_run_dir_exits_2(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str,
                             message: str) -> None:
    args = [f"run_dir={run_dir}"]
    if case == "no_csv":
        (run_dir / "csv" / "metrics.csv").unlink()
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        args = [f"run_dir={tmp_path / 'empty'}"]
    elif case == "missing_dir":
        args = [f"run_dir={tmp_path / 'nope'}"]
    elif case == "empty_csv":
        (run_dir / "csv" / "metrics.csv").write_text("")
    elif case == "header_only":
        (run_dir / "csv" / "metrics.csv").write_text(METRICS_CSV.splitlines()[0] + "\n")
    elif case == "both":
        args.append(f"probs_dir={tmp_path}")
    elif case == "oof_key":
        args.append("threshold=0.3")
    else:
        args = ["output_dir=x"]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


CHROMIUM = shutil.which("chromium")  # Debian's package; .ci/run installs it when missing
# as root, offline: no sandbox (it needs user namespaces), no first-run, update or sync traffic
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def render(browser: object, path: Path, screenshot: Path) -> tuple[list[str], list[str], list[list]]:
    """Open `path` in a fresh page, write a full-page screenshot -> (console errors, requested URLs, the <img>s'
    [complete, naturalWidth, naturalHeight])."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems, requests = [], []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri(), wait_until="load")
    decoded = page.evaluate("Array.from(document.images, img => [img.complete, img.naturalWidth, img.naturalHeight])")
    page.screenshot(path=screenshot, full_page=True)
    page.close()
    return problems, requests, decoded


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install -y chromium (as .ci/run does)")
def test_reports_render_in_chromium(oof: dict, run_dir: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' installs playwright")
    out = oof["oof"].parent / "report"
    main([f"probs_dir={oof['oof']}", f"data_root={oof['root']}", f"output_dir={out}", "worst=3"])
    main([f"run_dir={run_dir}"])
    pages = {out / "report.html": 4 + 3, run_dir / "report" / "report.html": 1}  # plots + overlays; the curves
    with sync_api.sync_playwright() as playwright:
        # launch() adds --headless and a fresh temporary --user-data-dir itself
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        results = {path: render(browser, path, path.with_suffix(".png")) for path in pages}
        browser.close()
    for path, (problems, requests, decoded) in results.items():
        assert problems == [], (path, problems)
        assert all(url.startswith(("file:", "data:")) for url in requests), requests  # nothing fetched online
        # the browser decoded every image, to the size of the PNG in its data URI
        expected = [decode_uri(img["src"]).shape[1::-1] for img in Page(path.read_text()).images]
        assert len(decoded) == pages[path] and decoded == [[True, w, h] for w, h in expected], (path, decoded)
        shot = cv2.imread(str(path.with_suffix(".png")))  # the screenshot, beside the page it shows
        assert shot.shape[1] == 1280 and shot.shape[0] > 800 and shot.std() > 10, shot.shape


@pytest.mark.parametrize("dice", [[0.995, 0.99, 0.97], [0.9, 0.6, 0.98], [0.999, 0.9985]])
def test_dice_axes_show_the_worst_bar(dice: list[float]):
    """The Dice plots zoom on their values, but the worst bar keeps a visible share of the axis (not a sliver) and
    the best fits under the top."""
    from carvana.report.html import zoom
    low, high = zoom(pd.Series(dice))
    assert 0 <= low < min(dice) and high > max(dice)
    assert (min(dice) - low) / (high - low) > 0.25
