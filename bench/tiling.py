"""Tiled prediction (predict.py tile=[h,w]): how far its masks are from the whole photo's, and the memory a large photo
takes with it.

    .venv/bin/python bench/tiling.py agreement --ckpt PATH --photos DIR [--masks DIR] [--tile 160 160] [--overlap 0.25]
        [--batch-size 4]
    .venv/bin/python bench/tiling.py memory [--size 5336 8000] [--tile 1024 1024] [--batch-size 4] [--encoder ...]
    .venv/bin/python bench/tiling.py real-set --out DIR [--real ../shared/data/real] [--scale 0.5]

agreement: predict.py over the photos of DIR twice, on the whole photo (padded) and in tiles, with the checkpoint's
threshold; prints the share of pixels where the two masks agree, its worst photo and the mean (the goal:
>= 0.995), and the mean Dice of the two masks; with --masks (the photos' true masks), each one's mean Dice against
the truth. Give a trained full-resolution checkpoint (data.input_size=null): a random one says nothing, its logits
hover about the threshold.
memory: predict.py (in a subprocess, the CPU, tta=none) over one generated photo of --size (height, width) in tiles of
--tile, with a random mobilenet_v2 U-Net: prints its peak resident memory (`peak_rss_gib=`, the goal: < 4 GiB
for 5336x8000 (height x width) with 1024x1024 tiles) and the seconds it took; and the size of the untiled network
input for comparison.
"""

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from predict_throughput import make_checkpoint

from carvana.data.io import probs_cut, read_image, read_mask, read_probs8, write_image
from carvana.data.layout import find_masks, list_images


def predict(args: list[str]) -> float:
    """python predict.py ARGS -> its seconds; a failure stops the bench with predict.py's error."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "predict.py", "trainer=cpu", *args], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        sys.exit(f"predict.py failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def agreement(ckpt: str, photos: Path, masks: Path | None, tile: list[int], overlap: float, threshold: float,
              batch_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        whole, tiled = Path(tmp) / "whole", Path(tmp) / "tiled"
        common = [f"ckpt={ckpt}", f"input_dir={photos}", "num_workers=0", f"hydra.run.dir={tmp}/h",
                  f"batch_size={batch_size}"]
        t_whole = predict([*common, f"output_dir={whole}"])
        t_tiled = predict([*common, f"output_dir={tiled}", f"tile=[{tile[0]},{tile[1]}]", f"tile_overlap={overlap}"])
        cut, shares, dices, truth = probs_cut(threshold), [], [], {"whole": [], "tiled": []}
        images = list_images(photos, "--photos")
        for photo, mask in zip(images, find_masks(images, masks, "--masks") if masks else [None] * len(images)):
            a = read_probs8(whole / f"{photo.stem}.png") > cut
            b = read_probs8(tiled / f"{photo.stem}.png") > cut
            shares.append(float((a == b).mean()))
            dices.append(dice(a, b))
            if mask is not None:
                true = read_mask(mask) > 0
                truth["whole"].append(dice(a, true))
                truth["tiled"].append(dice(b, true))
    worst = int(np.argmin(shares))
    print(f"{len(shares)} photos, tile={tile[0]}x{tile[1]} (height x width) overlap={overlap} batch_size={batch_size}: "
          f"whole {t_whole:.1f} s, tiled {t_tiled:.1f} s (each with predict.py's start)")
    print(f"mask_dice_tiled_vs_whole={np.mean(dices):.5f}")
    print(f"agreement_worst={shares[worst]:.5f} (photo {worst})")
    print(f"agreement_mean={np.mean(shares):.5f}")
    if masks:
        print(f"dice_vs_truth_whole={np.mean(truth['whole']):.5f} dice_vs_truth_tiled={np.mean(truth['tiled']):.5f}")


def memory(size: list[int], tile: list[int], encoder: str, batch_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "photos").mkdir()
        h, w = size
        rng = np.random.default_rng(0)
        image = cv2.resize(rng.integers(0, 256, (h // 64, w // 64, 3), dtype=np.uint8), (w, h))  # smooth noise
        cv2.ellipse(image, (w // 2, h // 2), (w // 3, h // 4), 0, 0, 360, (200, 40, 40), -1)
        cv2.imwrite(str(tmp / "photos" / "large.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        del image
        ckpt = make_checkpoint(tmp / "model.ckpt", encoder, None)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        seconds = predict([f"ckpt={ckpt}", f"input_dir={tmp / 'photos'}", f"output_dir={tmp / 'out'}", "tta=none",
                           f"tile=[{tile[0]},{tile[1]}]", "num_workers=0", f"batch_size={batch_size}",
                           f"hydra.run.dir={tmp}/h"])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far
        written = read_probs8(tmp / "out" / "large.png").shape
        shutil.rmtree(tmp / "out")
    assert written == (h, w), written
    if peak <= before:
        print("note: an earlier child of this process had a larger peak; the figure below is that bound")
    print(f"{h}x{w} photo (height x width), tiles {tile[0]}x{tile[1]}, model.encoder_name={encoder}, tta=none, "
          f"batch_size={batch_size} tiles: {seconds:.1f} s, mask {written[0]}x{written[1]}")
    print(f"peak_rss_gib={peak / 2**20:.2f}")


SIZES = (0.8, 0.9, 1.1, 1.2, 1.4)  # real/test's photos at these times the training photos' scale: none is their size
REAL = ROOT.parent / "shared" / "data" / "real"


def real_set(out: Path, real: Path, scale: float) -> None:
    """The scaled-down training set of the real car (images/, masks/ 0/255 PNG) and resized real/test photos."""
    for sub in ("train/images", "train/masks", "other"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for photo in sorted((real / "train").glob("*.jpg")):
        image, mask = read_image(photo), read_mask(real / "train_masks" / f"{photo.stem}_mask.gif")
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))  # cv2's (width, height)
        write_image(out / "train/images" / photo.name, cv2.resize(image, size, interpolation=cv2.INTER_AREA))
        small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        Image.fromarray(small * 255).save(out / "train/masks" / f"{photo.stem}.png")
    tests = sorted((real / "test").glob("*.jpg"))
    for i, photo in enumerate(tests):
        image, share = read_image(photo), scale * SIZES[i % len(SIZES)]
        size = (round(image.shape[1] * share), round(image.shape[0] * share))
        write_image(out / "other" / photo.name, cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    print(f"train={out / 'train'} ({len(list((out / 'train/images').iterdir()))} photos, scale {scale}) "
          f"other={out / 'other'} ({len(tests)} photos at {', '.join(map(str, SIZES))} times that scale)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("agreement", help="tiled against whole-photo masks of a trained checkpoint")
    a.add_argument("--ckpt", required=True)
    a.add_argument("--photos", type=Path, required=True)
    a.add_argument("--masks", type=Path, help="the photos' true masks: each mask's Dice against them")
    a.add_argument("--tile", type=int, nargs=2, default=[160, 160])
    a.add_argument("--overlap", type=float, default=0.25)
    a.add_argument("--threshold", type=float, default=0.5)
    a.add_argument("--batch-size", type=int, default=4, help="tiles a forward (predict.py's batch_size, default 4)")
    m = sub.add_parser("memory", help="peak memory of a large photo in tiles")
    m.add_argument("--size", type=int, nargs=2, default=[5336, 8000], help="height width")
    m.add_argument("--tile", type=int, nargs=2, default=[1024, 1024])
    m.add_argument("--encoder", default="mobilenet_v2")
    m.add_argument("--batch-size", type=int, default=4, help="tiles a forward (predict.py's batch_size, default 4)")
    r = sub.add_parser("real-set", help="the real car scaled down for training, real/test resized to other sizes")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--real", type=Path, default=REAL)
    r.add_argument("--scale", type=float, default=0.5)
    args = parser.parse_args()
    if args.what == "real-set":
        real_set(args.out, args.real, args.scale)
    elif args.what == "agreement":
        agreement(args.ckpt, args.photos, args.masks, args.tile, args.overlap, args.threshold, args.batch_size)
    else:
        memory(args.size, args.tile, args.encoder, args.batch_size)


if __name__ == "__main__":
    main()
