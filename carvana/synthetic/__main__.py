"""Generate a synthetic data set in Carvana's layout.

    python -m carvana.synthetic [root=data/synthetic] [train_cars=8] [test_cars=2] [height=1280] [width=1918]
                                [seed=0] [overwrite=false]

The same seed gives the same bytes. An existing non-empty root is refused unless overwrite=true.
"""

import sys

from carvana.cli import parse_words, run_or_exit
from carvana.synthetic.dataset import make_dataset
from carvana.synthetic.turntable import REF_SHAPE

DEFAULTS = {"root": "data/synthetic", "train_cars": 8, "test_cars": 2, "height": REF_SHAPE[0], "width": REF_SHAPE[1],
            "seed": 0, "overwrite": False}


def main(argv: list[str] | None = None) -> None:
    """Parse key=value words, write the set, print its root; expected errors: one line, exit status 2."""

    def work(words: list[str]) -> str:
        cfg = parse_words(words, DEFAULTS, "root=data/synthetic train_cars=8",
                          {"train_cars": int, "test_cars": int, "height": int, "width": int, "seed": int,
                           "overwrite": bool})
        return make_dataset(cfg["root"], cfg["train_cars"], cfg["test_cars"], (cfg["height"], cfg["width"]),
                            cfg["seed"], cfg["overwrite"])

    print(run_or_exit(sys.argv[1:] if argv is None else argv, __doc__, work))


if __name__ == "__main__":
    main()
