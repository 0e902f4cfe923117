"""Submission speed on N synthetic 1918x1280 probability masks: submit.py's paths against the seed's way.

    python -m bench.submit_speed [N]        # default 200 masks; well under a minute on 2 cores

- png: masks/s of make_submission(masks_dir=...) (processes, cv2 one thread each, vectorised RLE, gzip CSV)
  against the seed's way (a ThreadPool of cv2.imread, the seed's naive numpy RLE and str join, pandas to_csv);
- stream: masks/s of predict.py's write=rle path (threshold and encode masks already in memory, append each row
  to an RleShardWriter shard, then merge the shard with make_submission(rle_dir=...)) against the same seed way;
- rle: ms per mask of rle_encode against np.count_nonzero over the same mask (the memory floor).
The last line is `png_vs_seed=<ratio> stream_vs_seed=<ratio> rle_vs_floor=<ratio>`; the three CSVs are checked equal.
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

from carvana.io import write_probs_png
from carvana.rle import rle_encode
from carvana.submission import RleShardWriter, make_submission

H, W = 1280, 1918
DISTINCT = 16  # distinct synthetic cars, cycled over the N files


def synthetic_probs(seed: int) -> np.ndarray:
    """A car-like HxW uint8 probability map: a body and a cabin ellipse with soft edges, like a U-Net's output."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    cy, cx = H * rng.uniform(0.5, 0.6), W * rng.uniform(0.45, 0.55)
    body = ((yy - cy) / (H * rng.uniform(0.15, 0.22))) ** 2 + ((xx - cx) / (W * rng.uniform(0.3, 0.4))) ** 2
    cabin = ((yy - cy + H * 0.15) / (H * 0.12)) ** 2 + ((xx - cx) / (W * rng.uniform(0.15, 0.22))) ** 2
    inside = 1 - np.minimum(body, cabin)  # > 0 inside the car
    return (255 / (1 + np.exp(np.minimum(-inside * 40, 80)))).astype(np.uint8)


def seed_rle(mask: np.ndarray) -> str:
    """The seed's encoder: padded pixels, np.where of the changes, a str join of every number."""
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def seed_submit(paths: list[Path], names: list[str], output: Path) -> None:
    """The seed's way: threads reading the PNGs with cv2, its RLE, then pandas writing the CSV."""

    def encode(path: Path) -> str:
        probs = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        return seed_rle((probs > 127).astype(np.uint8))

    with ThreadPool(os.cpu_count()) as pool:
        rles = pool.map(encode, paths)
    pd.DataFrame({"img": names, "rle_mask": rles}).to_csv(
        output, index=False, compression={"method": "gzip", "compresslevel": 1}
    )


def stream_submit(probs: list[np.ndarray], names: list[str], sample: Path, rle_dir: Path, output: Path) -> None:
    """predict.py's write=rle path: threshold and encode each mask in memory, append it to a shard, then merge."""
    with RleShardWriter(rle_dir, rank=0) as writer:
        for i, name in enumerate(names):
            writer.write(name, rle_encode(probs[i % len(probs)] > 127))
    make_submission(sample, output, rle_dir=str(rle_dir), height=H, width=W)


def best_rate(run: Callable[[int], object], n: int, repeats: int = 2) -> float:
    """Masks per second of the best of `repeats` runs of run(i)."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return n / min(times)


def time_paths(n: int, probs: list[np.ndarray]) -> tuple[float, float, float, float]:
    """Masks/s of the seed's way, submit's PNG path and the streaming path on n PNGs in a temporary folder."""
    names = [f"{i // 16:012x}_{i % 16 + 1:02d}.jpg" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sample = tmp / "sample.csv"
        pd.DataFrame({"img": names, "rle_mask": "1 1"}).to_csv(sample, index=False)
        masks = tmp / "masks"
        masks.mkdir()
        paths = [masks / f"{Path(name).stem}.png" for name in names]
        for i, path in enumerate(paths):
            write_probs_png(path, probs[i % len(probs)])

        seed = best_rate(lambda i: seed_submit(paths, names, tmp / f"seed{i}.csv.gz"), n)
        png = best_rate(
            lambda i: make_submission(sample, tmp / f"png{i}.csv.gz", masks_dir=str(masks), height=H, width=W), n
        )
        stream = best_rate(lambda i: stream_submit(probs, names, sample, tmp / f"rle{i}", tmp / f"rle{i}.csv.gz"), n)
        # submit.py's own share of the streaming path: the shards exist (predict.py wrote them), merge them
        merge = best_rate(lambda i: make_submission(sample, tmp / f"merge{i}.csv.gz", rle_dir=str(tmp / "rle0"),
                                                    height=H, width=W), n)
        expected = pd.read_csv(tmp / "seed0.csv.gz", keep_default_na=False)
        for out in ("png0", "rle0"):
            assert expected.equals(pd.read_csv(tmp / f"{out}.csv.gz", keep_default_na=False)), f"{out} differs"
    return seed, png, stream, merge


def ms_per_call(fn: Callable[[np.ndarray], object], mask: np.ndarray) -> float:
    """Best-of-5 milliseconds of fn(mask)."""
    return min(timeit.repeat(functools.partial(fn, mask), number=20, repeat=5)) / 20 * 1e3


def main(n: int) -> None:
    probs = [synthetic_probs(seed) for seed in range(min(n, DISTINCT))]
    seed, png, stream, merge = time_paths(n, probs)
    masks = [p > 127 for p in probs]
    rle_ms = np.mean([ms_per_call(rle_encode, mask) for mask in masks])
    floor_ms = np.mean([ms_per_call(np.count_nonzero, mask) for mask in masks])
    print(f"masks={n} size={W}x{H} cores={len(os.sched_getaffinity(0))} (the three CSVs checked identical)")
    print(f"seed way (ThreadPool cv2.imread, naive RLE, pandas): {seed:8.1f} masks/s")
    print(f"submit png path (processes, vectorised RLE):        {png:8.1f} masks/s")
    print(f"stream path (encode + shard row, then merge):       {stream:8.1f} masks/s")
    print(f"stream, submit.py's part only (merge shards):        {merge:8.1f} masks/s  merge_vs_seed={merge / seed:.1f}")
    print(f"rle_encode {rle_ms:.3f} ms/mask, np.count_nonzero {floor_ms:.3f} ms/mask")
    print(f"png_vs_seed={png / seed:.2f} stream_vs_seed={stream / seed:.2f} rle_vs_floor={rle_ms / floor_ms:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
