"""Dice on unseen real cars: train on the one real car of ../shared/data/real, validate on real/val's other cars.

    python bench/real_car_quality.py [--seeds 80,81,82] [train.py overrides ...]
    python bench/real_car_quality.py --mode angles [--holdout 3,7,11,15] [overrides ...]
    python bench/real_car_quality.py --real /work/shared/data/real ...   (from a git worktree elsewhere)

Each seed trains the issue's check command (encoder=mobilenet, no pretrained weights, data.crop_size=null,
data.input_size=[320,480], 40 epochs, trainer=cpu) plus the overrides, e.g. `data.augment.car_color=0.8`.
--mode unseen (default): all 16 photos of the training car train (fold 1), the 3 photos of 2 other cars in
real/val validate (fold 0). --mode angles: some angles of the training car are held out instead (optimistic: the
same car). Prints each epoch's val_dice per seed, each seed's best, and last
`<mode>_dice_mean=<float> <mode>_dice_min=<float> seeds=<n>`.
"""

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REPO = Path(__file__).resolve().parents[1]
HOLDOUT_CAR = "000000000000"  # a made-up car id: held-out angles become their own validation fold
CHECK = ["encoder=mobilenet", "model.encoder_weights=null", "data.crop_size=null",
         "data.input_size=[320,480]", "trainer.max_epochs=40", "trainer=cpu"]


def copy_photo(src: Path, masks: Path, root: Path, name: str) -> None:
    shutil.copy(src, root / "train" / f"{name}.jpg")
    shutil.copy(masks / f"{src.stem}_mask.gif", root / "train_masks" / f"{name}_mask.gif")


def build_root(root: Path, real: Path, mode: str, holdout: list[int]) -> None:
    """A Carvana-layout folder: training photos in fold 1, validation photos in fold 0."""
    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    folds = {HOLDOUT_CAR: 0} if mode == "angles" else {}
    for photo in sorted((real / "train").glob("*.jpg")):
        car, angle = photo.stem.rsplit("_", 1)
        held = mode == "angles" and int(angle) in holdout
        copy_photo(photo, real / "train_masks", root, f"{HOLDOUT_CAR if held else car}_{angle}")
        folds[car] = 1
    if mode == "unseen":
        for photo in sorted((real / "val" / "train").glob("*.jpg")):
            copy_photo(photo, real / "val" / "train_masks", root, photo.stem)
            folds[photo.stem.rsplit("_", 1)[0]] = 0
    (root / "folds.csv").write_text("id,fold\n" + "".join(f"{car},{fold}\n" for car, fold in folds.items()))


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",")]


def val_dice_by_epoch(metrics: Path) -> dict[int, float]:
    with open(metrics) as f:
        return {int(row["epoch"]): float(row["val_dice"]) for row in csv.DictReader(f) if row.get("val_dice")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("unseen", "angles"), default="unseen")
    parser.add_argument("--seeds", type=ints, default="80,81,82", help="comma-separated (default: %(default)s)")
    parser.add_argument("--real", type=Path, default=REAL, help="the real photos (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="keep the runs (checkpoints, metrics.csv) here, not in a temp dir")
    parser.add_argument("--holdout", type=ints, default="3,7,11,15", help="--mode angles: the angles held out")
    args, overrides = parser.parse_known_args()
    if not (args.real / "train").is_dir() or not (args.real / "val" / "train").is_dir():
        sys.exit(f"error: {args.real} is missing or incomplete: this benchmark needs the real Carvana photos of "
                 f"../shared/data/real (or --real DIR)")
    if args.out and args.out.exists():
        sys.exit(f"error: --out {args.out} exists: give a new folder")
    bests = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.out or tmp
        root = Path(tmp) / "real"
        build_root(root, args.real, args.mode, args.holdout)
        for seed in args.seeds:
            run = Path(tmp) / f"run{seed}"
            command = [sys.executable, str(REPO / "train.py"), *CHECK, f"data.root={root}",
                       f"data.folds={root}/folds.csv", "fold=0", f"seed={seed}", f"hydra.run.dir={run}",
                       "trainer.enable_progress_bar=false", *overrides]
            print(" ".join(command), flush=True)
            start = time.time()
            out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"error: training failed (seed {seed}):\n{out.stderr[-3000:]}")
            dice = val_dice_by_epoch(run / "csv" / "metrics.csv")
            best = max(dice, key=lambda e: (dice[e], -e))
            bests.append(dice[best])
            print(f"seed={seed} val_dice " + " ".join(f"{e}:{d:.4f}" for e, d in sorted(dice.items())))
            print(f"seed={seed} best={dice[best]:.4f} epoch={best} epochs={len(dice)} "
                  f"seconds={time.time() - start:.0f}", flush=True)
    print(f"{args.mode}_dice_mean={sum(bests) / len(bests):.4f} {args.mode}_dice_min={min(bests):.4f} "
          f"{args.mode}_dice_max={max(bests):.4f} seeds={len(bests)}")


if __name__ == "__main__":
    main()
