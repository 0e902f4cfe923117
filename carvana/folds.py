"""Car-level folds: all 16 angles of a car share a fold; stratified by `stratifeature` (size and colour)."""

import argparse
from pathlib import Path

import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from carvana import CarvanaError
from carvana.io import atomic_path


def make_folds(metadata: pd.DataFrame, n_folds: int = 5, seed: int = 80, stratify: str | None = "stratifeature"
               ) -> pd.DataFrame:
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
                               f"column, or none (--stratify none)")
        splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(train, train[stratify])
    else:
        splits = KFold(n_folds, shuffle=True, random_state=seed).split(train)
    for fold, (_, val) in enumerate(splits):
        folds.loc[val, "fold"] = fold
    return folds


def write_folds(metadata_csv: str | Path, out: str | Path, n_folds: int = 5, seed: int = 80,
                stratify: str | None = "stratifeature") -> pd.DataFrame:
    """Read a metadata.csv, make the folds and write them as `id,fold` CSV (atomically)."""
    if not Path(metadata_csv).is_file():
        raise CarvanaError(f"metadata file {metadata_csv} does not exist")
    folds = make_folds(pd.read_csv(metadata_csv, dtype={"id": str}), n_folds, seed, stratify)
    with atomic_path(out) as tmp:
        folds.to_csv(tmp, index=False)
    return folds


def main() -> None:
    parser = argparse.ArgumentParser(description="Split the training cars of a Carvana metadata.csv into folds")
    parser.add_argument("--metadata", default="../shared/data/metadata.csv")
    parser.add_argument("--out", default="folds.csv")
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=80, help="the seed solution's seed")
    parser.add_argument("--stratify", default="stratifeature", help="a metadata column, or 'none'")
    args = parser.parse_args()
    try:
        folds = write_folds(args.metadata, args.out, args.n_folds, args.seed, None if args.stratify == "none" else
                            args.stratify)
    except CarvanaError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{args.out}: {len(folds)} cars in {args.n_folds} folds of {folds.fold.value_counts().sort_index().tolist()}")


if __name__ == "__main__":
    main()
