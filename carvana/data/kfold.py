"""Folds by group: every photo of a group (Carvana's car: its 16 angles) in one fold, so no fold validates on a near
copy of a training photo. Carvana's folds.csv (`id,fold`, 318 cars) is stratified by metadata's `stratifeature`."""

import re
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from carvana import CarvanaError
from carvana.data.layout import group_of
from carvana.files import atomic_path

GROUP_COLUMNS = ("id", "group")  # Carvana's folds.csv calls the car `id`


def make_folds(metadata: pd.DataFrame, n_folds: int, seed: int, stratify: str | None) -> pd.DataFrame:
    """The training cars (`train` true) of a Carvana metadata table in folds -> DataFrame[id, fold]."""
    train = metadata[metadata["train"].astype(str).str.upper() == "TRUE"].sort_values("id").reset_index(drop=True)
    if len(train) < n_folds:
        raise CarvanaError(f"{len(train)} training cars cannot make {n_folds} folds")
    folds = pd.DataFrame({"id": train["id"], "fold": -1})
    if stratify:
        if stratify not in train.columns:
            raise CarvanaError(f"metadata has no column '{stratify}' to stratify by: use one of {list(train.columns)}")
        if (train[stratify].value_counts() < n_folds).all():
            raise CarvanaError(f"every '{stratify}' class has fewer than {n_folds} cars: stratify by another "
                               f"column, or none (stratify=none)")
        splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(train, train[stratify])
    else:
        splits = KFold(n_folds, shuffle=True, random_state=seed).split(train)
    for fold, (_, val) in enumerate(splits):
        folds.loc[val, "fold"] = fold
    return folds


def write_folds(metadata_csv: str | Path, output: str | Path, n_folds: int, seed: int, stratify: str | None
                ) -> pd.DataFrame:
    """Read a Carvana metadata.csv, make the folds and write them as `id,fold` CSV (atomically)."""
    if not Path(metadata_csv).is_file():
        raise CarvanaError(f"metadata file {metadata_csv} does not exist: set data_root= (Kaggle's metadata.csv is "
                           "in the data) or metadata=")
    folds = make_folds(pd.read_csv(metadata_csv, dtype={"id": str}), n_folds, seed, stratify)
    with atomic_path(output) as tmp:
        folds.to_csv(tmp, index=False)
    return folds


def group_folds(images: list[Path], pattern: re.Pattern, n_folds: int, seed: int) -> pd.DataFrame:
    """Folds of the photos' groups (`pattern`'s first group of each name), shuffled by `seed` -> DataFrame[group,
    fold], groups sorted: the same photos and seed give the same folds."""
    groups = sorted({group_of(p, pattern) for p in images})
    if len(groups) < n_folds:
        raise CarvanaError(f"{len(groups)} group(s) of photos cannot make data.n_folds={n_folds} folds: lower "
                           "data.n_folds, or make smaller groups with data.group")
    folds = pd.DataFrame({"group": groups, "fold": -1})
    for fold, (_, val) in enumerate(KFold(n_folds, shuffle=True, random_state=seed).split(groups)):
        folds.loc[val, "fold"] = fold
    return folds


class Folds(NamedTuple):
    """A fold table: the fold of each group (or of each photo, `by_name`), and where it came from."""

    fold_of: dict[str, int]
    by_name: bool
    source: str

    def key(self, path: Path, pattern: re.Pattern) -> str:
        """What the table lists for this photo: its name without suffix, or its group."""
        return path.stem if self.by_name else group_of(path, pattern)


def read_folds(path: str | Path) -> Folds:
    """A fold table: columns `id,fold` (Carvana's: the car), `group,fold` or `name,fold` (a photo's name, with or
    without its suffix)."""
    path = Path(path)
    if not path.is_file():
        raise CarvanaError(f"folds file {path} does not exist (data.folds): make it with python -m carvana.folds, or "
                           "set data.folds=null to make folds by data.group")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise CarvanaError(f"folds file {path} is not a CSV ({err})") from None
    column = next((c for c in (*GROUP_COLUMNS, "name") if c in table.columns), None)
    if column is None or "fold" not in table.columns:
        raise CarvanaError(f"folds file {path} needs the columns id,fold (or group,fold or name,fold); it has "
                           f"{','.join(table.columns)}")
    try:
        folds = table["fold"].astype(int)
    except ValueError:
        raise CarvanaError(f"folds file {path}: the fold column holds values that are not integers") from None
    keys = table[column].map(lambda name: Path(name).stem) if column == "name" else table[column]
    return Folds(dict(zip(keys, folds)), column == "name", str(path))


def split(images: list[Path], folds: Folds, fold: int, pattern: re.Pattern) -> tuple[list[Path], list[Path]]:
    """Training and validation photos of `fold`; a photo without a fold, or a fold left empty, is refused in one
    line."""
    known = sorted(set(folds.fold_of.values()))
    if fold not in known:
        raise CarvanaError(f"fold={fold} is not in {folds.source}: choose one of {known}")
    keys = {p: folds.key(p, pattern) for p in images}
    unknown = sorted({k for k in keys.values() if k not in folds.fold_of})
    if unknown:
        what = "photo(s)" if folds.by_name else "group(s) of photos"
        raise CarvanaError(f"{len(unknown)} {what} are not in {folds.source} (first: {unknown[0]}): make the folds "
                           "for this data (python -m carvana.folds, or data.folds=null)")
    val = [p for p in images if folds.fold_of[keys[p]] == fold]
    train = [p for p in images if folds.fold_of[keys[p]] != fold]
    for name, photos in (("validation", val), ("training", train)):
        if not photos:
            raise CarvanaError(f"fold={fold} leaves no {name} photos ({folds.source}): choose another fold, or make "
                               "folds for this data")
    return train, val
