"""python -m carvana.report: the out-of-fold report of predictions (probs_dir=) or a training run's page (run_dir=);
the keys are conf/report.yaml's."""

import sys
from pathlib import Path

import pandas as pd

from carvana import CarvanaError
from carvana.cli import compose, run_or_exit
from carvana.predict.scores import unit_of
from carvana.report.oof import oof_settings, write_report
from carvana.report.run_page import best_epoch, write_run_report

RENAMED = {"oof_dir": "probs_dir", "out_dir": "output_dir"}
OOF_ONLY = ("data_root", "masks_dir", "images_dir", "group", "threshold", "worst", "workers")


def parse_args(argv: list[str]) -> dict:
    """`key=value` words -> write_report's or write_run_report's arguments, paths resolved; bad words: CarvanaError."""
    cfg = compose("report", argv, RENAMED)
    run_dir = cfg.pop("run_dir")
    if run_dir:
        if cfg["probs_dir"]:
            raise CarvanaError("give probs_dir= or run_dir=, not both: each writes its own report.html")
        defaults = compose("report", [])
        unused = [key for key in OOF_ONLY if cfg[key] != defaults[key]]
        if unused:
            raise CarvanaError(f"{unused[0]}= is for probs_dir= reports: a run_dir= report takes only output_dir=")
        return {"run_dir": run_dir, "output_dir": cfg["output_dir"] or str(Path(run_dir) / "report")}
    if not cfg["probs_dir"]:
        raise CarvanaError("probs_dir= (predict.py predict_on_val=true output) or run_dir= (a train.py run) is "
                           "required")
    return {**oof_settings(cfg), "output_dir": cfg["output_dir"] or str(Path(cfg["probs_dir"]) / "report")}


def print_summary(cfg: dict, result: dict[str, pd.DataFrame]) -> None:
    """The out-of-fold report's summary lines: mean and best-threshold Dice, hardest angles, the gallery."""
    per_image, sweep = result["per_image"], result["thresholds"]
    unit = unit_of(per_image)
    best = sweep.loc[sweep.dice.idxmax()]
    print(f"images={len(per_image)} {unit}s={per_image[unit].nunique()} mean_dice={per_image.dice.mean():.5f} "
          f"threshold={cfg['threshold']}")
    print(f"best_threshold={best.threshold:.2f} mean_dice={best.dice:.5f}")
    if "per_angle" in result:
        angles = result["per_angle"]
        print("hardest_angles=" + " ".join(f"{a:02d}:{d:.5f}" for a, d in zip(angles.angle[:3], angles.dice[:3])))
    if cfg["worst"]:
        print(f"worst.png: {min(cfg['worst'], len(per_image))} lowest-Dice photos, red = false positive, "
              "blue = false negative, green = predicted outline")


def main(argv: list[str] | None = None) -> None:
    """Parse key=value words, write the report, print its summary; expected errors: one line, exit status 2."""
    def work(words: list[str]) -> tuple[dict, dict | pd.DataFrame]:
        cfg = parse_args(words)
        return cfg, (write_run_report(**cfg) if "run_dir" in cfg else write_report(**cfg))

    cfg, result = run_or_exit(sys.argv[1:] if argv is None else argv, "report", work)
    if "run_dir" in cfg:
        best = best_epoch(result)
        print(f"epochs={len(result)} " + ("no val_dice logged" if best is None else
              f"best_epoch={result.epoch[best]} val_dice={result.val_dice[best]:.5f}"))
    else:
        print_summary(cfg, result)
    print(f"report={Path(cfg['output_dir']) / 'report.html'}")
    print(cfg["output_dir"], flush=True)


if __name__ == "__main__":
    main()
