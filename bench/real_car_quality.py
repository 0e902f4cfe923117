"""Leave-angles-out on the one real training car: train on some of its 16 angles, score Dice on the others.

    python bench/real_car_quality.py [--holdout 3 7 11 15] [train.py overrides ...]

Defaults as the issue measures them: encoder=mobilenet, no pretrained weights, data.input_size=[320,480],
40 epochs on CPU. The held-out angles are photos of the same car: an optimistic stand-in for an unseen car.
Last line: `real_holdout_dice=<float>`.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REPO = Path(__file__).resolve().parents[1]
HOLDOUT_CAR = "000000000000"  # a made-up car id: the held-out angles become their own validation fold


def build_root(root: Path, holdout: list[int]) -> None:
    """A Carvana-layout folder: the real car's kept angles as fold 1, its held-out angles as fold 0."""
    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    for photo in sorted((REAL / "train").glob("*.jpg")):
        car, angle = photo.stem.rsplit("_", 1)
        new_car = HOLDOUT_CAR if int(angle) in holdout else car
        shutil.copy(photo, root / "train" / f"{new_car}_{angle}.jpg")
        mask = f"{photo.stem}_mask.gif"
        shutil.copy(REAL / "train_masks" / mask, root / "train_masks" / f"{new_car}_{angle}_mask.gif")
        real_car = car
    (root / "folds.csv").write_text(f"id,fold\n{HOLDOUT_CAR},0\n{real_car},1\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdout", type=int, nargs="+", default=[3, 7, 11, 15], help="angles to hold out")
    args, overrides = parser.parse_known_args()
    if not REAL.is_dir():
        sys.exit(f"error: {REAL} is missing: this benchmark needs the real Carvana car of ../shared/data/real")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "real"
        build_root(root, args.holdout)
        command = [sys.executable, str(REPO / "train.py"), f"data.root={root}", f"data.folds={root}/folds.csv",
                   "~data.generate", "encoder=mobilenet", "model.encoder_weights=null", "data.input_size=[320,480]",
                   "trainer.max_epochs=40", f"hydra.run.dir={tmp}/run", "trainer.enable_progress_bar=false", *overrides]
        print(" ".join(command), flush=True)
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        if out.returncode:
            sys.exit(f"error: training failed:\n{out.stderr[-3000:]}")
        dice = re.search(r"val_dice=([0-9.]+)", out.stdout).group(1)
        metrics = (Path(tmp) / "run" / "csv" / "metrics.csv").read_text()
        print("\n".join(line for line in metrics.splitlines() if re.match(r"^\d+,,\d+,,[0-9.]", line))[:4000])
    print(f"real_holdout_dice={dice}")


if __name__ == "__main__":
    main()
