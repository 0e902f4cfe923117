"""Submission speed on N synthetic 1918x1280 probability masks: submit.py's paths against the seed's way.

    python -m bench.submit_speed [N]        # default 200 masks; well under a minute on 2 cores

All paths read the same PNG files, written by predict.py's writer (carvana.io.write_probs8), on the same cores.
- seed: the seed's generate_encoded_submission.py, rewritten: a ThreadPool (one thread per core) decoding each PNG
  with PIL (its scipy ndimage.imread(mode="L")), thresholding in place with two boolean-mask assignments, its
  numpy RLE and str join, then pandas to_csv(compression="gzip"). Also timed with cv2.imread and one comparison
  (`seed_cv2`, a stronger baseline than the seed itself), printed for reference.
- png: masks/s of make_submission(probs_dir=...) (processes: cv2 decode, vectorised RLE; the parent writes the
  gzip at level 1) against the seed's way;
- stream: what `submit.py rle_dir=` does with the shards that `predict.py write=rle` wrote (read them, check every
  row, write them in sample order with gzip level 1), in masks/s against the seed's way.
  The share of the streaming work done inside predict.py (threshold, encode, append the row: timed here in ms per
  mask) is a cost of predict.py, measured against its forward pass by bench/predict_throughput.py (`rle_share`);
  it is printed here too, with the ratio it would give if it were counted in the merge.
- rle: ms per mask of rle_encode against np.count_nonzero over the same mask (the memory floor).
The last line is `png_vs_seed=<ratio> stream_vs_seed=<ratio> rle_vs_floor=<ratio>`; the CSVs are checked equal.
"""

import functools
import os
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from carvana.cli import compose
from carvana.data.io import write_probs8
from carvana.data.rle import rle_encode
from carvana.predict.shards import RleShardWriter
from carvana.submission import make_submission

H, W = 1280, 1918
DISTINCT = 16  # distinct synthetic cars, cycled over the N files


def submission(sample: Path, output: Path, **where: str) -> Path:
    """make_submission with conf/submit.yaml's settings, this bench's mask size and threshold 0.5."""
    return make_submission(**{**compose("submit", []), "sample_csv": sample, "output": output, "height": H,
                              "width": W, "threshold": 0.5, **where})


def synthetic_probs(seed: int) -> np.ndarray:
    """A HxW uint8 probability map made the way a U-Net's is: logits of a car-like shape (a body and a cabin ellipse)
    with smooth noise at 1/4 size, upsampled bilinearly, sigmoid. Like a trained model's masks, most pixels sit a
    few levels off 0 or 255 and the PNG is ~150 KB (a trained mobilenet's on a real photo: 175 KB); a clean 0/255
    map would make every PNG path look 1.5x faster than it is."""
    rng = np.random.default_rng(seed)
    h, w = H // 4, W // 4
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    cy, cx = h * rng.uniform(0.5, 0.6), w * rng.uniform(0.45, 0.55)
    body = ((yy - cy) / (h * rng.uniform(0.15, 0.22))) ** 2 + ((xx - cx) / (w * rng.uniform(0.3, 0.4))) ** 2
    cabin = ((yy - cy + h * 0.15) / (h * 0.12)) ** 2 + ((xx - cx) / (w * rng.uniform(0.15, 0.22))) ** 2
    inside = 1 - np.minimum(body, cabin)  # > 0 inside the car
    noise = cv2.GaussianBlur(rng.normal(0, 0.8, (h, w)).astype(np.float32), (0, 0), 3)
    logits = cv2.resize(np.clip(inside * 12, -5, 8).astype(np.float32) + noise, (W, H), interpolation=cv2.INTER_LINEAR)
    return np.round(255 / (1 + np.exp(-logits))).astype(np.uint8)


def seed_rle(mask: np.ndarray) -> str:
    """The seed's encoder: padded pixels, np.where of the changes, a str join of every number."""
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def seed_encode(path: Path) -> str:
    """The seed's per-mask work: a PIL decode (its scipy ndimage.imread(mode="L")), an in-place threshold by two
    boolean-mask assignments, its RLE and str join."""
    probs = np.array(Image.open(path).convert("L"))
    probs[probs <= 127] = 0
    probs[probs > 127] = 1
    return seed_rle(probs)


def seed_submit(paths: list[Path], names: list[str], output: Path, encode: Callable[[Path], str] = seed_encode) -> None:
    """The seed's way: threads (one per core here) encoding the PNGs, then pandas writing the gzip CSV."""
    with ThreadPool(os.cpu_count()) as pool:
        rles = pool.map(encode, paths)
    pd.DataFrame({"img": names, "rle_mask": rles}).to_csv(output, index=False, compression="gzip")


def seed_cv2_encode(path: Path) -> str:
    """The seed's way with a faster decode and one comparison (a stronger baseline than the seed itself)."""
    return seed_rle((cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8))


def write_shard(probs: list[np.ndarray], names: list[str], rle_dir: Path) -> None:
    """predict.py's write=rle work for each mask: threshold, encode, append the row to the shard."""
    with RleShardWriter(rle_dir, rank=0) as writer:
        for i, name in enumerate(names):
            writer.write(name, rle_encode(probs[i % len(probs)] > 127))


def best_rate(run: Callable[[int], object], n: int, repeats: int = 3) -> float:
    """Masks per second of the best of `repeats` runs of run(i)."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return n / min(times)


def time_paths(n: int, probs: list[np.ndarray]) -> dict[str, float]:
    """Masks/s of the seed's ways, submit's PNG path, the shard writing and the merge, on n masks in a temp folder."""
    names = [f"{i // 16:012x}_{i % 16 + 1:02d}.jpg" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sample = tmp / "sample.csv"
        pd.DataFrame({"img": names, "rle_mask": "1 1"}).to_csv(sample, index=False)
        masks = tmp / "masks"
        masks.mkdir()
        paths = [masks / f"{Path(name).stem}.png" for name in names]
        for i, path in enumerate(paths):
            write_probs8(path, probs[i % len(probs)])

        rates = {
            "seed": best_rate(lambda i: seed_submit(paths, names, tmp / f"seed{i}.csv.gz"), n),
            "seed_cv2": best_rate(lambda i: seed_submit(paths, names, tmp / f"cv{i}.csv.gz", seed_cv2_encode), n),
            "png": best_rate(
                lambda i: submission(sample, tmp / f"png{i}.csv.gz", probs_dir=str(masks)), n
            ),
            "write_shard": best_rate(lambda i: write_shard(probs, names, tmp / f"rle{i}"), n),
            "merge": best_rate(
                lambda i: submission(sample, tmp / f"merge{i}.csv.gz", rle_dir=str(tmp / "rle0")),
                n,
            ),
        }
        expected = pd.read_csv(tmp / "seed0.csv.gz", keep_default_na=False)
        for out in ("cv0", "png0", "merge0"):
            assert expected.equals(pd.read_csv(tmp / f"{out}.csv.gz", keep_default_na=False)), f"{out} differs"
    return rates


def ms_per_call(fn: Callable[[np.ndarray], object], mask: np.ndarray) -> float:
    """Best-of-5 milliseconds of fn(mask)."""
    return min(timeit.repeat(functools.partial(fn, mask), number=20, repeat=5)) / 20 * 1e3


def main(n: int) -> None:
    probs = [synthetic_probs(seed) for seed in range(min(n, DISTINCT))]
    r = time_paths(n, probs)
    masks = [p > 127 for p in probs]
    rle_ms = np.mean([ms_per_call(rle_encode, mask) for mask in masks])
    floor_ms = np.mean([ms_per_call(np.count_nonzero, mask) for mask in masks])
    with_predict_part = 1 / (1 / r["write_shard"] + 1 / r["merge"])
    print(f"masks={n} size={H}x{W} (height x width) cores={len(os.sched_getaffinity(0))} (the CSVs checked identical)")
    print(f"seed way (threads, PIL decode, in-place threshold, naive RLE, pandas gzip): {r['seed']:8.1f} masks/s")
    print(f"seed way with cv2.imread and one comparison (stronger):  {r['seed_cv2']:8.1f} masks/s")
    print(
        f"submit.py probs_dir= (processes, vectorised RLE):        {r['png']:8.1f} masks/s  "
        f"png_vs_seed_cv2={r['png'] / r['seed_cv2']:.2f}"
    )
    print(f"submit.py rle_dir= (merge the shards predict.py wrote):  {r['merge']:8.1f} masks/s")
    print(
        f"predict.py's share of streaming (encode, append the row): {1e3 / r['write_shard']:.2f} ms/mask, "
        f"one core; counted in the merge: {with_predict_part:.1f} masks/s = {with_predict_part / r['seed']:.1f}x seed"
    )
    print(f"rle_encode {rle_ms:.3f} ms/mask, np.count_nonzero {floor_ms:.3f} ms/mask")
    print(
        f"png_vs_seed={r['png'] / r['seed']:.2f} stream_vs_seed={r['merge'] / r['seed']:.2f} "
        f"rle_vs_floor={rle_ms / floor_ms:.2f}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
