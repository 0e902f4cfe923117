"""What the validation overlays (logger.images) cost next to the validation itself.

    .venv/bin/python -m bench.overlay_cost [--photos 16] [--images 4] [--size 320 480] [--rounds 3]

One synthetic car set at Carvana's 1918x1280 (generated in a temporary folder), validated by pl.Trainer.validate
with the TensorBoard logger and ValidationOverlays(images), on a mobilenet U-Net at --size. Each round validates
once; the overlays' own time (ValidationOverlays.seconds) against the whole validation's gives the share. On a real
fold (about 1,018 validation photos) the validation grows with the photos while the overlays stay at `images`
photos: the last line also gives the share scaled to that fold from the per-photo times measured here.

The last line is `overlay_share=<ratio> per_overlay_s=<s> per_val_photo_s=<s> share_at_1018_photos=<ratio>`.
"""

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from pytorch_lightning.loggers import TensorBoardLogger

from carvana.data.kfold import write_folds
from carvana.synthetic import make_dataset
from carvana.training.callbacks import ValidationOverlays
from carvana.training.run import build_datamodule, build_module, settings_of

REAL_FOLD_PHOTOS = 1018  # 5,088 photos in 5 folds


class Clock(pl.Callback):
    """The validation's wall time, overlays included (they run in on_validation_epoch_end, before this)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds += time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=16, help="validation photos (16 per car)")
    parser.add_argument("--images", type=int, default=4, help="logger.images")
    parser.add_argument("--size", type=int, nargs=2, default=[320, 480], help="the network's input (h w)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    cars = max(1, args.photos // 16)
    with tempfile.TemporaryDirectory() as tmp:  # two folds of `cars` cars: fold 0 validates
        root = make_dataset(Path(tmp) / "data", train_cars=2 * cars, test_cars=0, size=(1280, 1918), seed=0)
        write_folds(root / "metadata.csv", root / "folds.csv", n_folds=2, seed=80, stratify=None)
        conf = Path(__file__).resolve().parents[1] / "conf"
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = settings_of(compose(config_name="config", overrides=[
                f"data.root={root}", f"data.folds={root / 'folds.csv'}", "fold=0", "data.batch_size=4",
                "data.num_workers=2", "data.crop_size=null", f"data.input_size=[{args.size[0]},{args.size[1]}]",
                "model.encoder_weights=null"]))
        dm = build_datamodule(cfg, Path(tmp))
        module = build_module(cfg, {})
        overlays, clock = ValidationOverlays(args.images), Clock()
        trainer = pl.Trainer(accelerator="cpu", logger=TensorBoardLogger(tmp, name="tb"), callbacks=[overlays, clock],
                             enable_progress_bar=False, enable_model_summary=False)
        shares, per_overlay, per_photo = [], [], []
        for _ in range(args.rounds):
            overlays.seconds, clock.seconds = 0.0, 0.0
            trainer.validate(module, datamodule=dm, verbose=False)
            photos = len(dm.val_set)
            shares.append(overlays.seconds / clock.seconds)
            per_overlay.append(overlays.seconds / min(args.images, photos))
            per_photo.append((clock.seconds - overlays.seconds) / photos)
            print(f"validation_s={clock.seconds:.2f} overlays_s={overlays.seconds:.2f} photos={photos} "
                  f"images={args.images} threads={torch.get_num_threads()}", flush=True)
    share, overlay_s, photo_s = (statistics.median(v) for v in (shares, per_overlay, per_photo))
    at_fold = args.images * overlay_s / (args.images * overlay_s + REAL_FOLD_PHOTOS * photo_s)
    print(f"overlay_share={share:.3f} per_overlay_s={overlay_s:.3f} per_val_photo_s={photo_s:.3f} "
          f"share_at_{REAL_FOLD_PHOTOS}_photos={at_fold:.4f}")


if __name__ == "__main__":
    main()
