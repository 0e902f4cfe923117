"""Car-level folds on the real metadata: every car once, stratified, reproducible, and the committed folds.csv."""

from pathlib import Path

import pandas as pd
import pytest

from carvana import CarvanaError
from carvana.data.kfold import make_folds, write_folds
from carvana.data.layout import car_id

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def metadata(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / "metadata.csv", dtype={"id": str})


@pytest.fixture(scope="module")
def train_cars(metadata: pd.DataFrame) -> pd.DataFrame:
    return metadata[metadata["train"].astype(str).str.upper() == "TRUE"]


@pytest.fixture(scope="module")
def folds(metadata: pd.DataFrame) -> pd.DataFrame:
    return make_folds(metadata, 5, 80, "stratifeature")


def test_every_train_car_exactly_once(folds: pd.DataFrame, train_cars: pd.DataFrame):
    assert list(folds.columns) == ["id", "fold"]
    assert len(train_cars) == 318
    assert len(folds) == 318
    assert folds["id"].is_unique
    assert set(folds["id"]) == set(train_cars["id"])


def test_five_folds_of_63_or_64_cars(folds: pd.DataFrame):
    sizes = folds["fold"].value_counts().sort_index()
    assert sizes.index.tolist() == [0, 1, 2, 3, 4]
    assert all(63 <= n <= 64 for n in sizes), sizes.tolist()


def test_stratifeature_spread_over_folds(folds: pd.DataFrame, train_cars: pd.DataFrame):
    table = folds.merge(train_cars[["id", "stratifeature"]], on="id")
    counts = pd.crosstab(table["stratifeature"], table["fold"])
    big = counts[counts.sum(axis=1) >= 5]
    assert len(big) >= 8
    spread = big.max(axis=1) - big.min(axis=1)
    assert (spread <= 1).all(), spread[spread > 1]


def test_deterministic(metadata: pd.DataFrame, folds: pd.DataFrame):
    pd.testing.assert_frame_equal(make_folds(metadata, 5, 80, "stratifeature"), folds)
    assert not make_folds(metadata, 5, 1, "stratifeature")["fold"].equals(folds["fold"])


def test_equal_to_the_committed_folds_csv(folds: pd.DataFrame):
    committed = pd.read_csv(REPO / "folds.csv", dtype={"id": str})
    assert list(committed.columns) == ["id", "fold"]
    merged = committed.merge(folds, on="id", how="outer", suffixes=("_committed", "_made"), indicator=True)
    assert (merged["_merge"] == "both").all()
    assert (merged["fold_committed"] == merged["fold_made"]).all()


def test_photos_of_one_car_share_a_fold(folds: pd.DataFrame, shared_data: Path):
    """Photo level: the 16 near-duplicate angles of a car never land in two folds."""
    fold_of = dict(zip(folds["id"], folds["fold"]))
    photos = [f"{car}_{angle:02d}.jpg" for car in folds["id"] for angle in range(1, 17)]
    photos += [p.name for p in (shared_data / "real" / "train").glob("*.jpg")]
    photo_fold = pd.DataFrame({"car": [car_id(p) for p in photos], "fold": [fold_of[car_id(p)] for p in photos]})
    assert car_id("0cdf5b5d0ce1_05.jpg") == "0cdf5b5d0ce1"
    assert (photo_fold.groupby("car")["fold"].nunique() == 1).all()
    assert photo_fold.groupby("car").size().min() == 16


def test_kfold_without_stratification(metadata: pd.DataFrame, tmp_path: Path, shared_data: Path):
    folds = make_folds(metadata, n_folds=3, seed=80, stratify=None)
    assert len(folds) == 318 and folds["id"].is_unique
    assert folds["fold"].value_counts().sort_index().tolist() == [106, 106, 106]
    out = tmp_path / "folds.csv"
    written = write_folds(shared_data / "metadata.csv", out, n_folds=3, seed=80, stratify=None)
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"id": str}), written)
    pd.testing.assert_frame_equal(written, folds)


def test_bad_stratify_column(metadata: pd.DataFrame):
    with pytest.raises(CarvanaError, match="nosuchcolumn"):
        make_folds(metadata, 5, 80, stratify="nosuchcolumn")


def test_stratify_classes_smaller_than_the_folds(metadata: pd.DataFrame):
    small = metadata[metadata["train"].astype(str).str.upper() == "TRUE"].head(8).copy()
    small["stratifeature"] = ["a", "a", "b", "b", "c", "c", "d", "d"]
    with pytest.raises(CarvanaError, match="stratifeature"):
        make_folds(small, 5, 80, "stratifeature")


def test_too_few_cars(metadata: pd.DataFrame):
    with pytest.raises(CarvanaError, match="folds"):
        make_folds(metadata.head(3).assign(train=True), 5, 80, "stratifeature")


def test_missing_metadata_file(tmp_path: Path):
    with pytest.raises(CarvanaError, match="nothere.csv"):
        write_folds(tmp_path / "nothere.csv", tmp_path / "folds.csv", 5, 80, "stratifeature")
    assert not (tmp_path / "folds.csv").exists()
