"""Dice on real cars nobody tuned to: train on the one real car of ../shared/data/real, score on other cars.

    python bench/real_car_quality.py [--seeds 80,81,82] [train.py overrides ...]
    python bench/real_car_quality.py --mode stress --name lite0 --results bench/results/few_photos.csv [overrides]
    python bench/real_car_quality.py --mode angles [--holdout 3,7,11,15] [overrides ...]
    python bench/real_car_quality.py --real /work/shared/data/real ...   (from a git worktree elsewhere)
    python bench/real_car_quality.py --table bench/results/few_photos.csv  (the study's table, in markdown)

Each seed trains `experiment=few_photos` (an ImageNet-pretrained EfficientNet-Lite0, photos resized to 320x480,
trainer=cpu) plus the overrides, e.g. `model.encoder_weights=null encoder=mobilenet` for the from-scratch baseline.
  --mode stress (default): the 16 photos of the training car train; the stress set scores: real/val's 3 photos of
      2 other cars, and copies of them with the car alone made white, light, dark and low-contrast (RECOLOURS).
  --mode unseen: real/val's 3 photos only.   --mode angles: some angles of the training car held out (optimistic).
After training, predict.py scores the last epoch's checkpoint photo by photo (predict_on_val). Prints per seed the
last epoch's mean Dice, its worst photo, the spread (max - min) of the last 5 epochs' val_dice, and at the end
`<mode>_dice_mean=<float> <mode>_worst=<float> <mode>_spread=<float> seeds=<n>`. With --results, each finished seed
appends its row to that CSV (a (name, seed) already there is skipped), so a study survives the end of a session.
"""

import argparse
import csv
import datetime
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REPO = Path(__file__).resolve().parents[1]
HOLDOUT_CAR = "000000000000"  # a made-up car id: held-out angles become their own validation fold
RECIPE = ["experiment=few_photos", "trainer=cpu"]
LAST = 5  # the spread is taken over this many last epochs
COLUMNS = ["date", "commit", "name", "mode", "seed", "overrides", "epochs", "minutes", "dice", "worst", "worst_photo",
           "white", "spread", "best", "best_epoch"]


def recolour(image: np.ndarray, mask: np.ndarray, kind: str) -> np.ndarray:
    """The car alone (its mask) repainted, its shading kept: `white` (everything the mask holds near white, tyres and
    glass too: the hardest case on a white studio), `light` (silver), `dark` (near black), `low` (the colour of the
    studio around it, a third of its contrast). The edge is blended over 1.5 pixels, as a photo's own edge is."""
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5)[..., None]
    image = image.astype(np.float32)
    lum = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    if kind == "white":
        car = 255 - (255 - lum) * 0.25
    elif kind == "light":
        car = 255 - (255 - lum) * 0.55
    elif kind == "dark":
        car = lum * 0.3
    else:
        ring = cv2.dilate(mask, np.ones((61, 61), np.uint8)).astype(bool) & ~mask.astype(bool)
        car = image[ring].mean(0) + (image - image[mask.astype(bool)].mean(0)) * 0.35
    car = np.broadcast_to(car, image.shape)
    return np.clip(image * (1 - alpha) + car * alpha, 0, 255).round().astype(np.uint8)


RECOLOURS = ("white", "light", "dark", "low")


def copy_photo(src: Path, masks: Path, root: Path, name: str, kind: str | None = None) -> None:
    mask_src = masks / f"{src.stem}_mask.gif"
    if kind is None:
        shutil.copy(src, root / "train" / f"{name}.jpg")
    else:
        image = np.asarray(Image.open(src).convert("RGB"))
        mask = np.asarray(Image.open(mask_src)).astype(np.uint8)  # palette GIF: {0, 1}
        Image.fromarray(recolour(image, mask, kind)).save(root / "train" / f"{name}.jpg", quality=95)
    shutil.copy(mask_src, root / "train_masks" / f"{name}_mask.gif")


def build_root(root: Path, real: Path, mode: str, holdout: list[int]) -> None:
    """A Carvana-layout folder: training photos in fold 1, the photos scored in fold 0."""
    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    folds = {HOLDOUT_CAR: 0} if mode == "angles" else {}
    for photo in sorted((real / "train").glob("*.jpg")):
        car, angle = photo.stem.rsplit("_", 1)
        held = mode == "angles" and int(angle) in holdout
        copy_photo(photo, real / "train_masks", root, f"{HOLDOUT_CAR if held else car}_{angle}")
        folds[car] = 1
    if mode in ("unseen", "stress"):
        for photo in sorted((real / "val" / "train").glob("*.jpg")):
            car, angle = photo.stem.rsplit("_", 1)
            for kind in (None, *RECOLOURS) if mode == "stress" else (None,):
                name = car if kind is None else f"{car}-{kind}"
                copy_photo(photo, real / "val" / "train_masks", root, f"{name}_{angle}", kind)
                folds[name] = 0
    (root / "folds.csv").write_text("id,fold\n" + "".join(f"{car},{fold}\n" for car, fold in folds.items()))


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",")]


def val_dice_by_epoch(metrics: Path) -> dict[int, float]:
    with open(metrics) as f:
        return {int(row["epoch"]): float(row["val_dice"]) for row in csv.DictReader(f) if row.get("val_dice")}


def run(command: list[str], what: str) -> str:
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"error: {what} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def score_seed(root: Path, run_dir: Path, seed: int, overrides: list[str]) -> dict:
    """Train one seed, then score its last checkpoint photo by photo with predict.py."""
    start = time.time()
    run([sys.executable, str(REPO / "train.py"), *RECIPE, f"data.root={root}", f"data.folds={root}/folds.csv",
         "fold=0", f"seed={seed}", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false",
         "early_stopping_patience=1000", *overrides], f"training (seed {seed})")
    minutes = (time.time() - start) / 60
    run([sys.executable, str(REPO / "predict.py"), f"ckpt={run_dir}/checkpoints/last.ckpt", "predict_on_val=true",
         f"output_dir={run_dir}/oof", "trainer=cpu"], f"predict.py (seed {seed})")
    table = pd.read_csv(run_dir / "oof" / "dice_fold0.csv")
    dice = val_dice_by_epoch(run_dir / "csv" / "metrics.csv")
    last = [dice[e] for e in sorted(dice)[-LAST:]]
    best = max(dice, key=lambda e: (dice[e], -e))
    worst = table.loc[table.dice.idxmin()]
    white = table[table.image.str.contains("-white")].dice
    print(f"seed={seed} val_dice " + " ".join(f"{e}:{d:.4f}" for e, d in sorted(dice.items())))
    print(f"seed={seed} photos " + " ".join(f"{r.image}:{r.dice:.4f}" for r in table.itertuples()))
    return {"seed": seed, "epochs": len(dice), "minutes": round(minutes, 1), "dice": round(table.dice.mean(), 4),
            "worst": round(worst.dice, 4), "worst_photo": worst.image,
            "white": round(white.mean(), 4) if len(white) else "", "spread": round(max(last) - min(last), 4),
            "best": round(dice[best], 4), "best_epoch": best}


def done_seeds(results: Path | None, name: str, mode: str) -> set[int]:
    if results is None or not results.is_file():
        return set()
    table = pd.read_csv(results)
    return set(table[(table["name"] == name) & (table["mode"] == mode)].seed)


def append_row(results: Path, row: dict) -> None:
    new = not results.is_file()
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def print_table(results: Path) -> None:
    """A markdown row per candidate of a results CSV: the means over its seeds, its worst photo, its largest spread."""
    table = pd.read_csv(results)
    print("| candidate | overrides | seeds | epochs | minutes | Dice (mean) | worst photo | white cars "
          "| spread, last 5 | best epoch's |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in table.groupby("name", sort=False):
        worst = runs.loc[runs.worst.idxmin()]
        print(f"| {name} | `{runs.overrides.fillna('').iloc[0] or '-'}` | {len(runs)} | {runs.epochs.iloc[0]} | "
              f"{runs.minutes.mean():.1f} | {runs.dice.mean():.4f} | {worst.worst:.4f} ({worst.worst_photo}) | "
              f"{runs.white.mean():.4f} | {runs.spread.max():.4f} | {runs.best.mean():.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("stress", "unseen", "angles"), default="stress")
    parser.add_argument("--seeds", type=ints, default="80,81,82", help="comma-separated (default: %(default)s)")
    parser.add_argument("--real", type=Path, default=REAL, help="the real photos (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="keep the runs (checkpoints, metrics.csv) here, not in a temp dir")
    parser.add_argument("--holdout", type=ints, default="3,7,11,15", help="--mode angles: the angles held out")
    parser.add_argument("--name", default="recipe", help="the candidate's name in --results (default: %(default)s)")
    parser.add_argument("--results", type=Path, help="append each seed's row to this CSV; skip seeds it holds")
    parser.add_argument("--table", type=Path, help="print a results CSV as the study's markdown table, and stop")
    args, overrides = parser.parse_known_args()
    if args.table:
        return print_table(args.table)
    if not (args.real / "train").is_dir() or not (args.real / "val" / "train").is_dir():
        sys.exit(f"error: {args.real} is missing or incomplete: this benchmark needs the real Carvana photos of "
                 f"../shared/data/real (or --real DIR)")
    if args.out and args.out.exists():
        sys.exit(f"error: --out {args.out} exists: give a new folder")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.out or Path(tmp)
        root = tmp / "real"
        build_root(root, args.real, args.mode, args.holdout)
        for seed in sorted(set(args.seeds) - done_seeds(args.results, args.name, args.mode)):
            row = score_seed(root, tmp / f"run{seed}", seed, overrides)
            print(f"seed={seed} dice={row['dice']:.4f} worst={row['worst']:.4f} ({row['worst_photo']}) "
                  f"spread_last{LAST}={row['spread']:.4f} best={row['best']:.4f}@{row['best_epoch']} "
                  f"minutes={row['minutes']}", flush=True)
            row.update(date=datetime.date.today().isoformat(), commit=commit.strip(), name=args.name,
                       mode=args.mode, overrides=" ".join(overrides))
            rows.append(row)
            if args.results:
                append_row(args.results, row)
    if rows:
        print(f"{args.mode}_dice_mean={np.mean([r['dice'] for r in rows]):.4f} "
              f"{args.mode}_worst={min(r['worst'] for r in rows):.4f} "
              f"{args.mode}_spread={max(r['spread'] for r in rows):.4f} seeds={len(rows)}")


if __name__ == "__main__":
    main()
