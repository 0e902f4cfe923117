"""The streaming path at Kaggle's scale: two ranks' RLE shards of all 100,064 test photos merged by submit.py.

    python -m bench.merge_at_scale          # needs ../shared/data/sample_submission.csv and ~1.5 GB of disk

Writes the shards as predict.py's writer does (a car-like RLE row per photo, the photos dealt to two ranks in a shuffled
order), times make_submission(rle_dir=...) over Kaggle's sample_submission.csv (every row checked as RLE, gzip level
1), then reads the whole submission back and checks every row, its order and that it is one gzip member. Prints the
seconds, the sizes and the peak memory; last line `merge_s=<seconds> rows_per_s=<n> peak_rss_mb=<MB>`.
"""

import random
import resource
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pandas as pd

from bench.submit_speed import synthetic_probs
from carvana.cli import compose
from carvana.data.rle import rle_encode
from carvana.predict.shards import HEADER, RleShardWriter
from carvana.submission import make_submission

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "sample_submission.csv"


def write_shards(directory: Path, names: list[str], rles: list[str], ranks: int = 2) -> float:
    """Seconds to write every photo's row into `ranks` shards, photos dealt in a shuffled order."""
    order = list(range(len(names)))
    random.Random(0).shuffle(order)
    start = time.perf_counter()
    writers = [RleShardWriter(directory, rank) for rank in range(ranks)]
    for k, i in enumerate(order):
        writers[k % ranks].write(names[i], rles[i % len(rles)])
    for writer in writers:
        writer.close()
    return time.perf_counter() - start


def check(path: Path, names: list[str], rles: list[str]) -> None:
    """Every row of the gzip CSV at `path` is the expected one, in order, and the file is one gzip member."""
    inflate, rest, n = zlib.decompressobj(31), b"", 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            lines = (rest + inflate.decompress(chunk)).split(b"\n")
            rest = lines.pop()
            for line in lines:
                expected = HEADER if n == 0 else f"{names[n - 1]},{rles[(n - 1) % len(rles)]}"
                assert line.decode() == expected, f"row {n} differs"
                n += 1
    assert inflate.eof and not inflate.unused_data and rest == b"" and n == len(names) + 1, "not one whole member"


def main() -> None:
    if not SAMPLE.is_file():
        sys.exit(f"error: {SAMPLE} is missing: this benchmark needs Kaggle's sample_submission.csv in ../shared/data")
    names = pd.read_csv(SAMPLE)["img"].tolist()
    rles = [rle_encode(synthetic_probs(seed) > 127) for seed in range(16)]
    tmp = Path(tempfile.mkdtemp())
    try:
        write_s = write_shards(tmp / "rle", names, rles)
        shards_mb = sum(p.stat().st_size for p in (tmp / "rle").iterdir()) / 1e6
        start = time.perf_counter()
        out = make_submission(**{**compose("submit", []), "sample_csv": SAMPLE, "output": tmp / "submission.csv.gz",
                                 "rle_dir": tmp / "rle", "threshold": 0.5})
        merge_s = time.perf_counter() - start
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        check(out, names, rles)
        print(f"{len(names)} photos, 2 ranks: shards written in {write_s:.1f} s ({shards_mb:.0f} MB, as predict.py's "
              f"writer would spread them over the run); merged in {merge_s:.1f} s into "
              f"{out.stat().st_size / 1e6:.0f} MB of gzip; every row checked, one gzip member")
        print(f"merge_s={merge_s:.1f} rows_per_s={len(names) / merge_s:.0f} peak_rss_mb={rss_mb:.0f}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
