"""submit.py and carvana.submission: rows, order, gzip, ensembles, errors, RLE shards and their merge."""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import submission
from hydra import compose, initialize_config_dir

from carvana import CarvanaError
from carvana.data.io import write_probs8
from carvana.data.rle import rle_decode, rle_encode
from carvana.predict.shards import HEADER, RleShardWriter
from carvana.submission import combine

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
H, W = 64, 96
NAMES = [f"{car}_{angle:02d}.jpg" for car in ("fff9b3a5373f", "00087a6bd4dc") for angle in (1, 2, 3)]


def write_sample(path: Path, names: list[str]) -> Path:
    pd.DataFrame({"img": names, "rle_mask": "1 1"}).to_csv(path, index=False)
    return path


def write_pngs(directory: Path, probs: dict[str, np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, p in probs.items():
        write_probs8(directory / f"{Path(name).stem}.png", p)
    return directory


def random_probs(seed: int, names: list[str] = NAMES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.integers(0, 256, (H, W), dtype=np.uint8) for name in names}


def run_submit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """python submit.py ARGS from `cwd`, as a user runs it, with the tiny mask size."""
    cmd = [sys.executable, str(REPO / "submit.py"), f"height={H}", f"width={W}", f"hydra.run.dir={cwd}/hydra", *args]
    return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=120)


def read_submission(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt") as f:
        assert f.readline() == HEADER + "\n"
    return pd.read_csv(path, keep_default_na=False)  # compression inferred from .gz


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "sample.csv", NAMES)


def test_config_composes_with_plain_defaults():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="submit")
    assert cfg.sample_csv is None and cfg.threshold is None  # what predict.py recorded, else data/carvana and 0.5
    assert (cfg.strategy, cfg.height, cfg.width) == ("average", 1280, 1918)
    assert cfg.probs_dir is None and cfg.rle_dir is None and cfg.fill_missing is False and cfg.allow_unlisted is False


def test_png_rows_order_gzip_and_default_output(tmp_path: Path, sample: Path):
    probs = random_probs(0)
    write_pngs(tmp_path / "masks", probs)
    reversed_sample = write_sample(tmp_path / "reversed.csv", NAMES[::-1])
    proc = run_submit(tmp_path, "probs_dir=masks", f"sample_csv={reversed_sample.name}", "workers=2")
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert re.fullmatch(r"submissions/submission-\d{8}-\d{6}\.csv\.gz", str(out)), out
    assert [p.name for p in (tmp_path / "submissions").iterdir()] == [out.name]  # no temporary file left
    table = read_submission(tmp_path / out)
    assert table.columns.tolist() == ["img", "rle_mask"]
    assert table["img"].tolist() == NAMES[::-1]
    for name, rle in zip(table["img"], table["rle_mask"]):
        np.testing.assert_array_equal(rle_decode(rle, (H, W)), probs[name] > 127)


def test_threshold_is_strictly_above():
    probs = np.array([[127, 128, 0, 255]], dtype=np.uint8)
    assert combine([probs], 0.5, "average").tolist() == [[False, True, False, True]]
    assert combine([probs], 0.0, "average").tolist() == [[True, True, False, True]]


def test_ensembles_average_vs_vote(tmp_path: Path, sample: Path):
    # three models; left block: one sure, two unsure (mean 152 > 127.5, but 1 vote of 3)
    # middle block: two just above 0.5, one sure of background (mean 87, but 2 votes of 3)
    a, b, c = (np.zeros((H, W), np.uint8) for _ in range(3))
    a[:, :32], b[:, :32], c[:, :32] = 255, 100, 100
    a[:, 32:64], b[:, 32:64], c[:, 32:64] = 130, 130, 0
    for model, probs in zip("abc", (a, b, c)):
        write_pngs(tmp_path / model, dict.fromkeys(NAMES, probs))
    expected = {"average": np.zeros((H, W), bool), "vote": np.zeros((H, W), bool)}
    expected["average"][:, :32] = True
    expected["vote"][:, 32:64] = True
    for strategy, mask in expected.items():
        out = tmp_path / f"{strategy}.csv.gz"
        proc = run_submit(
            tmp_path, "probs_dir=[a,b,c]", f"strategy={strategy}", "sample_csv=sample.csv", f"output={out}"
        )
        assert proc.returncode == 0, proc.stderr
        table = read_submission(out)
        assert table["img"].tolist() == NAMES
        assert set(table["rle_mask"]) == {rle_encode(mask)}


def test_missing_mask_stops_before_output(tmp_path: Path, sample: Path):
    probs = random_probs(1)
    del probs[NAMES[2]], probs[NAMES[4]]
    write_pngs(tmp_path / "masks", probs)
    proc = run_submit(tmp_path, "probs_dir=masks", "sample_csv=sample.csv", "output=sub.csv.gz")
    assert_user_error(proc, "2 masks are missing", f"{Path(NAMES[2]).stem}.png", "fill_missing=true")
    assert not (tmp_path / "sub.csv.gz").exists() and list(tmp_path.glob("*.gz")) == []

    proc = run_submit(tmp_path, "probs_dir=masks", "sample_csv=sample.csv", "output=sub.csv.gz", "fill_missing=true")
    assert proc.returncode == 0, proc.stderr
    table = read_submission(tmp_path / "sub.csv.gz")
    assert table["img"].tolist() == NAMES
    assert table["rle_mask"][2] == "" and table["rle_mask"][4] == ""
    assert table["rle_mask"][0] == rle_encode(probs[NAMES[0]] > 127)


def test_wrong_size_and_sample_without_img(tmp_path: Path, sample: Path):
    probs = random_probs(2)
    probs[NAMES[3]] = np.zeros((W, H), np.uint8)  # transposed
    write_pngs(tmp_path / "masks", probs)
    proc = run_submit(tmp_path, "probs_dir=masks", "sample_csv=sample.csv", "output=sub.csv.gz", "workers=2")
    assert_user_error(proc, f"{Path(NAMES[3]).stem}.png", f"is {W}x{H} (height x width), expected {H}x{W}")
    assert list(tmp_path.glob("*.gz")) == []

    pd.DataFrame({"image": NAMES, "rle_mask": ""}).to_csv(tmp_path / "bad.csv", index=False)
    proc = run_submit(tmp_path, "probs_dir=masks", "sample_csv=bad.csv", "output=sub.csv.gz")
    assert_user_error(proc, "bad.csv", "no 'img' column")


def test_real_sample_order_is_kept(tmp_path: Path):
    real_sample = SHARED_DATA / "sample_submission.csv"
    if not real_sample.is_file():
        pytest.skip(f"Kaggle's sample_submission.csv is not at {real_sample}")
    names = pd.read_csv(real_sample)["img"].tolist()
    assert len(names) == 100_064 and names[0] == "0004d4463b50_01.jpg"
    subset = names[:40:3] + names[-20::4]  # Kaggle's order, with gaps and both ends
    probs = random_probs(3, subset)
    write_pngs(tmp_path / "masks", probs)
    out = submission(write_sample(tmp_path / "subset.csv", subset), tmp_path / "sub.csv.gz",
                     probs_dir=str(tmp_path / "masks"), workers=1, height=H, width=W)
    table = read_submission(out)
    assert table["img"].tolist() == subset
    for name, rle in zip(table["img"], table["rle_mask"]):
        np.testing.assert_array_equal(rle_decode(rle, (H, W)), probs[name] > 127)


def test_shard_writer_resumes_and_drops_a_half_line(tmp_path: Path):
    rles = {name: rle_encode(p > 127) for name, p in random_probs(4).items()}
    with RleShardWriter(tmp_path, rank=0) as writer:
        assert writer.done() == set()
        for name in NAMES[:3]:
            writer.write(name, rles[name])
    shard = tmp_path / "rle-rank0.csv"
    with open(shard, "ab") as f:  # a process killed in the middle of a row
        f.write(f"{NAMES[3]},{rles[NAMES[3]][:7]}".encode())
    writer = RleShardWriter(tmp_path, rank=0)
    assert writer.done() == set(NAMES[:3])
    for name in NAMES[3:]:
        writer.write(name, rles[name])
    writer.close()
    lines = shard.read_text().splitlines()
    assert lines[0] == HEADER and lines[1:] == [f"{name},{rles[name]}" for name in NAMES]
    with pytest.raises(ValueError):
        RleShardWriter(tmp_path, rank=1).write("a,b.jpg", "1 2")


def test_rle_dir_merge(tmp_path: Path, sample: Path):
    probs = random_probs(5)
    rles = {name: rle_encode(p > 127) for name, p in probs.items()}
    shards = tmp_path / "rle"
    for rank, part in enumerate((NAMES[1::2], NAMES[0::2])):
        with RleShardWriter(shards, rank) as writer:
            for name in part:
                writer.write(name, rles[name])
    with RleShardWriter(shards, 2) as writer:  # a photo written twice (a resumed rank), identically
        writer.write(NAMES[0], rles[NAMES[0]])
    with open(shards / "rle-rank2.csv", "a") as f:  # and a half-written last line
        f.write(f"{NAMES[5]},12 3")
    proc = run_submit(tmp_path, "rle_dir=rle", "sample_csv=sample.csv", "output=sub.csv.gz")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "sub.csv.gz"
    table = read_submission(tmp_path / "sub.csv.gz")
    assert table["img"].tolist() == NAMES
    for name, rle in zip(table["img"], table["rle_mask"]):
        np.testing.assert_array_equal(rle_decode(rle, (H, W)), probs[name] > 127)


def record(directory: Path, **recorded: object) -> Path:
    """A predict.json in `directory` recording the settings `recorded` (threshold=, data_root=) for NAMES."""
    (directory / "predict.json").write_text(json.dumps({"entries": [{"settings": recorded, "photos": NAMES}]}))
    return directory


def test_null_threshold_and_sample_csv_are_what_predict_recorded(tmp_path: Path):
    """threshold and sample_csv null: the threshold predict.py recorded, its data root's sample_submission.csv;
    folders that recorded two of either are refused naming the key that settles it; shards refuse another cut."""
    from carvana.cli import compose
    from carvana.submission import make_submission

    probs, root = random_probs(7), tmp_path / "root"
    root.mkdir()
    write_sample(root / "sample_submission.csv", NAMES[::-1])
    a = record(write_pngs(tmp_path / "a", probs), threshold=0.3, data_root=str(root))
    b = record(write_pngs(tmp_path / "b", probs), threshold=0.6, data_root=str(tmp_path))
    keys = {**compose("submit", []), "height": H, "width": W, "workers": 1, "output": tmp_path / "sub.csv.gz"}
    table = read_submission(make_submission(**{**keys, "probs_dir": a}))
    assert table["img"].tolist() == NAMES[::-1]  # the recorded root's sample
    for name, rle in zip(table["img"], table["rle_mask"]):
        np.testing.assert_array_equal(rle_decode(rle, (H, W)), probs[name] > 76)  # p / 255 > 0.3
    with pytest.raises(CarvanaError, match=r"different thresholds \(0.3, 0.6\): give threshold= to say which"):
        make_submission(**{**keys, "probs_dir": [a, b]})
    with pytest.raises(CarvanaError, match=r"different data_roots \(.*\): give sample_csv= to say which"):
        make_submission(**{**keys, "probs_dir": [a, b], "threshold": 0.5})
    with RleShardWriter(tmp_path / "rle", 0) as writer:
        writer.write(NAMES[0], "1 2")
    with pytest.raises(CarvanaError, match="were cut at 0.3 when predict.py wrote them"):
        make_submission(**{**keys, "rle_dir": record(tmp_path / "rle", threshold=0.3), "threshold": 0.5})


def test_rle_dir_errors(tmp_path: Path, sample: Path):
    rles = {name: rle_encode(p > 127) for name, p in random_probs(6).items()}
    shards = tmp_path / "rle"
    with RleShardWriter(shards, 0) as writer:
        for name in NAMES[:4]:
            writer.write(name, rles[name])
    kwargs = {"sample_csv": sample, "output": tmp_path / "sub.csv.gz", "rle_dir": shards, "height": H, "width": W}
    with pytest.raises(CarvanaError, match=r"2 of 6 photos have no row.*" + re.escape(NAMES[4])):
        submission(**kwargs)
    assert not (tmp_path / "sub.csv.gz").exists()
    table = read_submission(submission(**kwargs, fill_missing=True))
    (tmp_path / "sub.csv.gz").unlink()
    assert table["rle_mask"].tolist()[4:] == ["", ""]

    with RleShardWriter(shards, 1) as writer:
        writer.write(NAMES[1], "1 5")  # a different row for a photo rank 0 wrote
    with pytest.raises(CarvanaError, match=re.escape(f"{NAMES[1]} (rle-rank0.csv vs rle-rank1.csv)")):
        submission(**kwargs, fill_missing=True)
    (shards / "rle-rank1.csv").unlink()

    with RleShardWriter(shards, 3) as writer:
        writer.write(NAMES[4], f"1 {H * W + 1}")  # runs past the mask: predicted at another size
    with pytest.raises(CarvanaError, match=r"rle-rank3.csv.*past the"):
        submission(**kwargs, fill_missing=True)
    assert not (tmp_path / "sub.csv.gz").exists() and list(tmp_path.glob(".*")) == []  # temporary file removed
    with pytest.raises(CarvanaError, match="holds no predictions"):
        submission(**{**kwargs, "rle_dir": tmp_path})


@pytest.mark.parametrize("kind", ["png", "rle"])
def test_submit_without_keys_reads_what_predict_wrote_by_default(tmp_path: Path, kind: str):
    """python submit.py alone: predict.py's default output_dir (predictions/test), PNGs or shards, whichever is there,
    said on stderr, and the data set's sample_submission.csv (data/carvana)."""
    probs = random_probs(7)
    (tmp_path / "data" / "carvana").mkdir(parents=True)
    write_sample(tmp_path / "data" / "carvana" / "sample_submission.csv", NAMES)
    if kind == "png":
        write_pngs(tmp_path / "predictions" / "test", probs)
    else:
        with RleShardWriter(tmp_path / "predictions" / "test", 0) as writer:
            for name, p in probs.items():
                writer.write(name, rle_encode(p > 127))
    proc = run_submit(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ("RLE shards" if kind == "rle" else "PNG probabilities") in proc.stderr and "predictions/test" in proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.parent == Path("submissions") and path.name.endswith(".csv.gz")
    table = read_submission(tmp_path / path)
    assert table["img"].tolist() == NAMES
    for name, rle in zip(table["img"], table["rle_mask"]):
        np.testing.assert_array_equal(rle_decode(rle, (H, W)), probs[name] > 127)


def test_submit_without_keys_and_without_predictions_is_one_line(tmp_path: Path):
    assert_user_error(run_submit(tmp_path), "predictions/test", "predict.py")


def test_the_submission_is_standard_gzip(tmp_path: Path, sample: Path):
    """Written by the standard library: gzip -t agrees, and one decompression gives every row."""
    import shutil

    rles = {name: rle_encode(p > 127) for name, p in random_probs(8).items()}
    with RleShardWriter(tmp_path / "rle", 0) as writer:
        for name in reversed(NAMES):
            writer.write(name, rles[name])
    out = submission(sample, tmp_path / "sub.csv.gz", rle_dir=tmp_path / "rle", height=H, width=W)
    text = gzip.decompress(out.read_bytes()).decode()
    assert text == HEADER + "\n" + "".join(f"{name},{rles[name]}\n" for name in NAMES)
    if shutil.which("gzip"):
        subprocess.run(["gzip", "-t", str(out)], check=True)


def test_masks_dir_still_works_for_a_release_with_a_notice(tmp_path: Path, sample: Path):
    """masks_dir= (the probabilities) was renamed probs_dir=: it works, with one warning line."""
    write_pngs(tmp_path / "masks", random_probs(9))
    proc = run_submit(tmp_path, "masks_dir=masks", "sample_csv=sample.csv", "output=sub.csv.gz")
    assert proc.returncode == 0, proc.stderr
    assert "warning: masks_dir= is now probs_dir= (masks_dir= goes in the next release)" in proc.stderr.splitlines()
    assert read_submission(tmp_path / "sub.csv.gz")["img"].tolist() == NAMES
