"""Car-level folds: all 16 angles of a car share a fold; stratified by `stratifeature` (size and colour).

    python -m carvana.folds [data_root=data/carvana] [metadata=<data_root>/metadata.csv] [out=folds.csv]
                            [n_folds=5] [seed=80] [stratify=stratifeature|none]
"""

import sys
from pathlib import Path

import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from carvana import CarvanaError
from carvana.cli import parse_words, run_or_exit
from carvana.io import atomic_path

DEFAULTS = {"data_root": "data/carvana", "metadata": None, "out": "folds.csv", "n_folds": 5, "seed": 80,
            "stratify": "stratifeature"}


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
                               f"column, or none (stratify=none)")
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
        raise CarvanaError(f"metadata file {metadata_csv} does not exist: set data_root= (Kaggle's metadata.csv is "
                           "in the data) or metadata=")
    folds = make_folds(pd.read_csv(metadata_csv, dtype={"id": str}), n_folds, seed, stratify)
    with atomic_path(out) as tmp:
        folds.to_csv(tmp, index=False)
    return folds


def main(argv: list[str] | None = None) -> None:
    """Parse key=value words, write the folds, print a summary; expected errors: one line, exit status 2."""

    def work(words: list[str]) -> tuple[dict, pd.DataFrame]:
        cfg = parse_words(words, DEFAULTS, "data_root=data/carvana out=folds.csv",
                          {"n_folds": int, "seed": int, "stratify": str})
        metadata = cfg["metadata"] or Path(cfg["data_root"]) / "metadata.csv"
        stratify = None if cfg["stratify"] == "none" else cfg["stratify"]
        return cfg, write_folds(metadata, cfg["out"], cfg["n_folds"], cfg["seed"], stratify)

    cfg, folds = run_or_exit(sys.argv[1:] if argv is None else argv, __doc__, work)
    print(f"{cfg['out']}: {len(folds)} cars in {cfg['n_folds']} folds of "
          f"{folds.fold.value_counts().sort_index().tolist()}")


if __name__ == "__main__":
    main()
