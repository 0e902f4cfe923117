"""python -m carvana.report: the out-of-fold report of predictions (probs_dir=) or a training run's page (run_dir=);
the keys are conf/report.yaml's."""

import sys
from pathlib import Path

import pandas as pd

from carvana import CarvanaError
from carvana.cli import compose, conf_value, run_or_exit
from carvana.data.layout import CAR_GROUP
from carvana.predict.manifest import recorded_settings
from carvana.predict.scores import unit_of
from carvana.report.oof import write_report
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


def oof_settings(cfg: dict) -> dict:
    """A probs_dir= report's data root, group, masks and photos: each as given, else as predict.py recorded them in
    probs_dir (its folders moved along when the data root is given anew), else Kaggle's layout under the default data
    root and Carvana's cars."""
    probs_dir = cfg["probs_dir"]
    settings = recorded_settings([probs_dir])
    recorded = {key: values[0] for key, values in settings.items() if len(values) == 1 and values[0]}
    root = Path(cfg.pop("data_root") or recorded.get("data_root") or conf_value("data/carvana", "root"))
    cfg["group"] = cfg["group"] or recorded.get("group", CAR_GROUP)
    for key, default in (("masks_dir", "train_masks"), ("images_dir", "train")):
        folder = Path(recorded[key]) if key in recorded else root / default
        if key in recorded and "data_root" in recorded and folder.is_relative_to(recorded["data_root"]):
            folder = root / folder.relative_to(recorded["data_root"])
        if key == "masks_dir" and not cfg[key]:
            refuse_photos_without_masks(probs_dir, settings, folder)
        cfg[key] = cfg[key] or str(folder)
    return cfg


def refuse_photos_without_masks(probs_dir: str, settings: dict[str, list], masks_dir: Path) -> None:
    """A CarvanaError when predict.py recorded the predictions (`settings`) as of photos without masks (input_dir=)
    and the default mask folder read instead does not exist: the photos have no masks, so say that, not that a folder
    is missing."""
    if masks_dir.is_dir() or settings.get("masks_dir") != [None]:
        return
    photos = sorted(str(p) for p in settings.get("images_dir", []))
    raise CarvanaError(f"probs_dir={probs_dir} holds predictions of photos without masks (input_dir={', '.join(photos)}"
                       "; predict.json records no masks_dir), and the report scores them against true masks: give "
                       "masks_dir=<the folder of their masks>, or predict with predict_on_val=true")


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
