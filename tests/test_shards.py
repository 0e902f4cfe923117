"""Rows compressed ahead (carvana.gzrows) and the shards' .deflate records: one valid gzip member, resume, fallback."""

import gzip
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import carvana.gzrows
from carvana.gzrows import GzipRows, deflate_row
from carvana.rle import rle_encode
from carvana.shards import HEADER, PIECES_SUFFIX, RleShardWriter, scan_pieces, scan_shard
from carvana.submission import make_submission

H, W = 64, 96
NAMES = [f"{car}_{angle:02d}.jpg" for car in ("fff9b3a5373f", "00087a6bd4dc") for angle in range(1, 5)]


def rles(seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    return {name: rle_encode(rng.random((H, W)) > 0.5) for name in NAMES}


def one_member(data: bytes) -> bytes:
    """The content of `data` when it is exactly one gzip member (nothing after it), else AssertionError."""
    inflate = zlib.decompressobj(wbits=31)
    content = inflate.decompress(data) + inflate.flush()
    assert inflate.eof and inflate.unused_data == b"", "not a single complete gzip member"
    return content


def test_gzip_rows_mixes_pieces_and_rows_into_one_member(tmp_path: Path):
    rng = np.random.default_rng(0)
    sizes = (0, 3, 5000, 70000)
    rows = [b"x" * n + rng.integers(48, 58, n).astype(np.uint8).tobytes() + b"\n" for n in sizes]
    out = tmp_path / "rows.csv.gz"
    with open(out, "wb") as f:
        writer = GzipRows(f)
        for i, row in enumerate(rows):
            writer.write(row, deflate_row(row) if i % 2 else None)  # pieces made ahead, and rows compressed now
        writer.close()
    data = out.read_bytes()
    assert one_member(data) == b"".join(rows)
    assert gzip.decompress(data) == b"".join(rows)
    if shutil.which("gzip"):  # the reference tool agrees: CRC and length check out
        subprocess.run(["gzip", "-t", str(out)], check=True)


def test_a_row_with_its_piece_is_copied_not_compressed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    codes = rles(1)
    with RleShardWriter(tmp_path / "rle", 0) as writer:
        for name in NAMES:
            writer.write(name, codes[name])
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"img": NAMES, "rle_mask": ""}).to_csv(sample, index=False)
    compressed = []
    monkeypatch.setattr(carvana.gzrows, "deflate_row", lambda row: compressed.append(row) or zlib_piece(row))

    def merge(name: str) -> pd.DataFrame:
        compressed.clear()
        out = make_submission(sample, tmp_path / name, rle_dir=tmp_path / "rle", height=H, width=W)
        one_member(out.read_bytes())
        return pd.read_csv(out, keep_default_na=False)

    table = merge("a.csv.gz")
    assert compressed == [f"{HEADER}\n".encode()]  # only the header: every row came with its piece
    assert table["rle_mask"].tolist() == [codes[name] for name in NAMES]
    assert capsys.readouterr().err == ""
    (tmp_path / "rle" / f"rle-rank0{PIECES_SUFFIX}").unlink()  # shards without pieces: compressed at merge
    assert merge("b.csv.gz").equals(table)
    assert len(compressed) == 1 + len(NAMES)
    assert f"{len(NAMES)} rows had no up-to-date compressed copy" in capsys.readouterr().err  # said, not silent


def zlib_piece(row: bytes) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    return compressor.compress(row) + compressor.flush(zlib.Z_SYNC_FLUSH)


def test_pieces_resume_after_a_kill_between_a_row_and_its_record(tmp_path: Path):
    codes = rles(2)
    with RleShardWriter(tmp_path, 0) as writer:
        for name in NAMES[:3]:
            writer.write(name, codes[name])
    shard, pieces = tmp_path / "rle-rank0.csv", tmp_path / f"rle-rank0{PIECES_SUFFIX}"
    with open(shard, "ab") as f:  # killed after the row of NAMES[3], before its record was complete
        f.write(f"{NAMES[3]},{codes[NAMES[3]]}\n".encode())
    with open(pieces, "ab") as f:
        f.write(struct.pack(">III", 1, 2, 256) + b"abc")  # a record header promising 256 bytes, and 3 of them
    with RleShardWriter(tmp_path, 0) as writer:
        assert writer.done() == set(NAMES[:4])
        for name in NAMES[4:]:
            writer.write(name, codes[name])
    rows = scan_shard(shard)[0]
    records, end = scan_pieces(pieces, limit=100)
    assert len(records) == len(rows) == len(NAMES) and end == pieces.stat().st_size  # the half record is gone
    data = shard.read_bytes()
    with open(pieces, "rb") as f:
        for row, record in zip(rows, records):
            f.seek(record.start)
            text = data[row.start : row.start + row.length]
            raw = f.read(record.length)
            piece = zlib.decompressobj(wbits=-15).decompress(raw)  # a piece has no final block
            assert piece == text and record.crc == zlib.crc32(text) and record.piece_crc == zlib.crc32(raw)


def test_a_row_edited_by_hand_is_checked_and_compressed_again(tmp_path: Path):
    codes = rles(3)
    with RleShardWriter(tmp_path / "rle", 0) as writer:
        for name in NAMES:
            writer.write(name, codes[name])
    shard = tmp_path / "rle" / "rle-rank0.csv"
    edited = shard.read_text().replace(f"{NAMES[2]},{codes[NAMES[2]]}", f"{NAMES[2]},1 5")
    shard.write_text(edited)  # its record now belongs to another text: the CRC tells
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"img": NAMES, "rle_mask": ""}).to_csv(sample, index=False)
    out = make_submission(sample, tmp_path / "sub.csv.gz", rle_dir=tmp_path / "rle", height=H, width=W)
    assert one_member(out.read_bytes()).decode() == f"{HEADER}\n" + "".join(
        f"{name},{'1 5' if name == NAMES[2] else codes[name]}\n" for name in NAMES
    )


def test_a_damaged_piece_is_not_copied(tmp_path: Path, capsys: pytest.CaptureFixture):
    codes = rles(4)
    with RleShardWriter(tmp_path / "rle", 0) as writer:
        for name in NAMES:
            writer.write(name, codes[name])
        writer.write(NAMES[0], "1 2")  # already in the shard: the first row stays
    pieces = tmp_path / "rle" / f"rle-rank0{PIECES_SUFFIX}"
    records, _ = scan_pieces(pieces, limit=100)
    data = bytearray(pieces.read_bytes())
    data[records[3].start + records[3].length // 2] ^= 0xFF  # bit rot inside a piece; its row and CRC are intact
    pieces.write_bytes(bytes(data))
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"img": NAMES, "rle_mask": ""}).to_csv(sample, index=False)
    out = make_submission(sample, tmp_path / "sub.csv.gz", rle_dir=tmp_path / "rle", height=H, width=W)
    assert one_member(out.read_bytes()).decode() == f"{HEADER}\n" + "".join(f"{n},{codes[n]}\n" for n in NAMES)
    assert "1 rows had no up-to-date compressed copy" in capsys.readouterr().err
