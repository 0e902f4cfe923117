"""python -m carvana.crops: car boxes from predicted probabilities (conf/crops.yaml; carvana.data.boxes)."""

import sys

from carvana import CarvanaError
from carvana.cli import check_at_least, check_threshold, compose, run_or_exit
from carvana.data.boxes import write_bboxes

RENAMED = {"pred_dir": "probs_dir", "out": "output"}


def main(argv: list[str] | None = None) -> None:
    """Write bboxes.csv and print its summary and path; expected errors: one line, exit status 2."""
    def work(words: list[str]) -> tuple[dict, object]:
        cfg = compose("crops", words, RENAMED)
        for key in ("probs_dir", "output"):
            if not cfg[key]:
                raise CarvanaError(f"{key}= is required: python -m carvana.crops probs_dir=DIR output=bboxes.csv")
        check_threshold(cfg["threshold"])
        check_at_least(cfg, {"margin": 0, "multiple": 1, "workers": 1})
        return cfg, write_bboxes(cfg["probs_dir"], cfg["output"], cfg["threshold"], cfg["margin"], cfg["multiple"],
                                 cfg["workers"])

    cfg, table = run_or_exit(sys.argv[1:] if argv is None else argv, "crops", work)
    heights, widths = table.y_end - table.y_start, table.x_end - table.x_start
    print(f"boxes={len(table)} mean_box={heights.mean():.0f}x{widths.mean():.0f} "
          f"max_box={heights.max()}x{widths.max()} (height x width)")
    print(cfg["output"], flush=True)


if __name__ == "__main__":
    main()
