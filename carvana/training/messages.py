"""What train.py says besides its result line: the photos each side of the fold holds, a warning for a fold too small
to choose a checkpoint by, a warning when a large recipe would train on the CPU; and Lightning's lines that are not
the user's business are kept off the screen by carvana.progress.quiet_lightning."""

import sys
from pathlib import Path

import torch

from carvana.data.io import image_size
from carvana.data.layout import IMAGE_SUFFIXES, first_process, group_of, group_pattern

SMALL_FOLD = 5  # validation photos below which val_dice, and the best checkpoint chosen by it, is a few photos' Dice
# training pixels (photos x epochs x height x width) above which a CPU run is warned about: Carvana's defaults are
# 4,070 x 60 x 1024 x 1024 = 2.6e11; experiment=few_photos on 100 photos 100 x 12 x 320 x 480 = 1.8e8
CPU_PIXELS = 1e10


def plural(n: int, word: str) -> str:
    """'1 photo', '2 photos'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def say_photos(fold: int, train: list[Path], val: list[Path], group: str | None) -> None:
    """`fold 0: 32 training photos (2 groups), 16 validation photos (1 group)` on stdout (rank 0), and a warning on
    stderr when the validation photos are too few for val_dice to mean much."""
    if not first_process():
        return
    pattern = group_pattern(group)
    groups = [len({group_of(p, pattern) for p in photos}) for photos in (train, val)]
    print(f"fold {fold}: {plural(len(train), 'training photo')} ({plural(groups[0], 'group')}), "
          f"{plural(len(val), 'validation photo')} ({plural(groups[1], 'group')})", flush=True)
    if len(val) < SMALL_FOLD:
        print(f"warning: fold {fold} validates on {plural(len(val), 'photo')}: val_dice, and the best checkpoint "
              "chosen by it, is their Dice alone; use fewer folds (data.n_folds) or more photos per fold",
              file=sys.stderr, flush=True)


def say_cpu(cfg: dict) -> None:
    """A warning at the start, before the photos are checked, when a large recipe would train on the CPU: the photos
    counted in data.root/data.image_dir (validation ones too), naming experiment=few_photos. `cfg`: plain settings."""
    if not first_process() or (torch.cuda.is_available() and cfg["trainer"]["accelerator"] != "cpu"):
        return
    data = cfg["data"]
    folder = Path(data["root"]) / data["image_dir"]
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not photos:
        return
    size = data["crop_size"] or data["input_size"]
    if size is None:  # full photos: the first one's size as displayed, from its header
        size = image_size(photos[0])
    h, w = size[:2]
    epochs = cfg["trainer"]["max_epochs"]
    if len(photos) * epochs * h * w < CPU_PIXELS:
        return
    print(f"warning: no GPU: {plural(len(photos), 'photo')} x {plural(epochs, 'epoch')} at {h}x{w} (height x "
          "width) on the CPU take hours to days; for a few photos on a CPU use the few-photo recipe "
          "(experiment=few_photos), or run on a GPU",
          file=sys.stderr, flush=True)
