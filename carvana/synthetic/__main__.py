"""python -m carvana.synthetic: generate a synthetic data set in Carvana's layout (conf/synthetic.yaml)."""

import sys

from carvana.cli import compose, run_or_exit
from carvana.synthetic.dataset import make_dataset


def main(argv: list[str] | None = None) -> None:
    """Write the set, print its root; expected errors: one line, exit status 2."""
    def work(words: list[str]) -> str:
        cfg = compose("synthetic", words)
        return make_dataset(cfg["root"], cfg["train_cars"], cfg["test_cars"], (cfg["height"], cfg["width"]),
                            cfg["seed"], cfg["overwrite"])

    print(run_or_exit(sys.argv[1:] if argv is None else argv, "synthetic", work))


if __name__ == "__main__":
    main()
