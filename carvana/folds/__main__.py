"""python -m carvana.folds: Carvana's car-level folds from metadata.csv (conf/folds.yaml; carvana.data.kfold)."""

import sys
from pathlib import Path

from carvana.cli import compose, conf_value, run_or_exit
from carvana.data.kfold import write_folds

RENAMED = {"out": "output"}


def main(argv: list[str] | None = None) -> None:
    """Write the folds and print a summary; expected errors: one line, exit status 2."""
    def work(words: list[str]) -> tuple[dict, object]:
        cfg = compose("folds", words, RENAMED)
        root = Path(cfg["data_root"] or conf_value("data/carvana", "root"))
        stratify = None if cfg["stratify"] == "none" else cfg["stratify"]
        return cfg, write_folds(cfg["metadata"] or root / "metadata.csv", cfg["output"], cfg["n_folds"], cfg["seed"],
                                stratify)

    cfg, folds = run_or_exit(sys.argv[1:] if argv is None else argv, "folds", work)
    print(f"{cfg['output']}: {len(folds)} cars in {cfg['n_folds']} folds of "
          f"{folds.fold.value_counts().sort_index().tolist()}")


if __name__ == "__main__":
    main()
