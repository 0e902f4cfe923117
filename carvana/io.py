"""Carvana's files: names (car, angle), readers and writers of photos and masks; every writer goes through a
temporary name and a rename."""

import contextlib
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carvana import CarvanaError

# one decode thread per worker process: DataLoader workers already run in parallel
cv2.setNumThreads(1)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Carvana's GIFs first, then predictions written by predict.py, so a prediction directory can serve as labels
MASK_PATTERNS = ("{}_mask.gif", "{}.png", "{}_mask.png", "{}.gif")
_JPEG_END = b"\xff\xd9"
# probability PNGs are written 100,064 times and read once: no per-row filter search and zlib level 1. On a trained
# model's 1918x1280 mask of a real photo that is 6.3 ms to write and 3.1 ms to read instead of 18.7 and 8.3 (libpng's
# adaptive filters), for a file 25% larger (175 KB); the other filters and zlib strategies were slower both ways
_PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def car_id(path: str | os.PathLike) -> str:
    """The car of a photo in Kaggle's naming: '0cdf5b5d0ce1' for '0cdf5b5d0ce1_05.jpg'."""
    return Path(path).stem.rsplit("_", 1)[0]


def angle_of(path: str | os.PathLike) -> int:
    """The turntable angle of a photo, 1..16: 5 for '0cdf5b5d0ce1_05.jpg'."""
    return int(Path(path).stem.rsplit("_", 1)[1])


# atomic_path's temporary names: .<stem>.tmp-<host>-<pid><suffix>; the host keeps ranks on other nodes' files safe
_TEMPORARY = re.compile(r"^\..*\.tmp-(?P<host>[^/]+)-(?P<pid>\d+)(\.[A-Za-z0-9]+)?$")
_HOST = socket.gethostname().replace("-", "_")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{_HOST}-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether a file is atomic_path's temporary (a reader of a folder skips it)."""
    return _TEMPORARY.match(Path(path).name) is not None


def remove_dead_temporaries(directory: str | os.PathLike) -> int:
    """Remove the temporaries that processes of this host killed before their rename left in `directory` (kill -9,
    a node lost); those of live processes stay. Returns how many were removed."""
    removed = 0
    for path in Path(directory).glob(".*.tmp-*") if Path(directory).is_dir() else []:
        match = _TEMPORARY.match(path.name)
        if match and match["host"] == _HOST and not _alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_threshold(threshold: object, key: str = "threshold") -> float:
    """A probability cut strictly inside (0, 1), else a CarvanaError naming the key: at 0 or 1 every pixel (or none)
    would be car, and the submission would be silently empty or full."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise CarvanaError(f"{key}={threshold} is a probability: choose a value strictly between 0 and 1 (e.g. 0.5)")
    return float(threshold)


def check_writable_dir(directory: str | os.PathLike, key: str) -> Path:
    """Create `directory` if needed and prove it takes a file, before any long work starts; else a CarvanaError
    naming the key and the path (a file in the way, no permission, a read-only file system)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-check.tmp-{_HOST}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CarvanaError(f"{key}={directory} cannot hold the output ({err.strerror or err}): choose a writable "
                           "folder") from None
    return directory


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as HxWx3 uint8 RGB; a missing, unreadable or truncated JPEG raises CarvanaError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CarvanaError(f"cannot read photo {path}: {err.strerror}") from None
    # cv2 decodes a truncated JPEG with a grey tail and only a warning: check the end-of-image marker ourselves
    if path.suffix.lower() in (".jpg", ".jpeg") and not data.rstrip(b"\x00").endswith(_JPEG_END):
        raise CarvanaError(f"photo {path} is truncated (no JPEG end marker): download it again")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CarvanaError(f"photo {path} is not a readable image: replace or remove it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def check_photo(path: str | os.PathLike) -> tuple[int, int]:
    """Decode a photo all through, cheaply, before a long run -> its (width, height); a file that is not an image, a
    truncated JPEG, or one whose image data is corrupt is a CarvanaError naming it.

    libjpeg decodes corrupt data with a mere warning on the process's stderr (what cv2 and PIL then return looks like
    a photo): the warnings are read back from file descriptor 2, so call this in a process of its own, one photo at a
    time (check_photos runs it in worker processes). At 1/8 scale in grey the decoder still reads every coefficient:
    1.6 ms a 1918x1280 photo instead of 17.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            size = img.size
        data = np.fromfile(path, np.uint8)
    except OSError as err:  # PIL's UnidentifiedImageError too
        raise CarvanaError(f"photo {path} is not a readable image ({err}): replace or remove it") from None
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            decoded = cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_8)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        warnings = captured.read().decode(errors="replace").strip()
    if decoded is None or warnings or (path.suffix.lower() in (".jpg", ".jpeg") and not data[-64:].tobytes()
                                       .rstrip(b"\x00").endswith(_JPEG_END)):
        why = warnings.splitlines()[0] if warnings else "truncated or undecodable"
        raise CarvanaError(f"photo {path} is corrupt ({why}): download it again or remove it")
    return size


def check_photos(paths: list[Path], workers: int = 1) -> Iterator[tuple[int, int]]:
    """check_photo on every photo, in order, in `workers` fresh Python processes -> each photo's (width, height); the
    first bad photo raises its CarvanaError.

    Fresh interpreters, not multiprocessing: a forked worker of a process with threads (a SLURM job under submitit)
    can wait forever on a lock copied while another thread held it, and a spawned one re-runs a calling script that
    has no `if __name__ == "__main__"` guard. Each worker takes a contiguous share of the photos.
    """
    paths = [str(p) for p in paths]
    if not paths:
        return
    share = -(-len(paths) // max(1, min(workers, len(paths))))
    shares = [paths[i:i + share] for i in range(0, len(paths), share)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        *filter(None, [os.environ.get("PYTHONPATH")])])}
    procs = []
    try:
        for part in shares:
            proc = subprocess.Popen([sys.executable, "-c", "from carvana.io import _check_photos_worker as w; w()"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            procs.append(proc)
            proc.stdin.write("\n".join(part) + "\n")  # the worker reads all of it before it writes anything
            proc.stdin.close()
        for part, proc in zip(shares, procs):
            done = 0
            for line in proc.stdout:
                if line.startswith("!"):
                    raise CarvanaError(line[1:].strip())
                width, height = line.split()
                done += 1
                yield int(width), int(height)
            if proc.wait() != 0 or done != len(part):
                raise CarvanaError(f"checking the photos stopped at {part[done] if done < len(part) else part[-1]} "
                                   f"(worker exit code {proc.returncode}): see the error above")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


def _check_photos_worker() -> None:
    """check_photos' worker: photo paths on stdin, one `width height` line per photo on stdout, or `!message` for the
    first bad one."""
    for path in sys.stdin.read().splitlines():
        try:
            width, height = check_photo(path)
        except CarvanaError as err:
            print("!" + " ".join(str(err).split()), flush=True)
            return
        print(width, height, flush=True)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask as HxW uint8 in {0, 1}, by its values: Carvana's palette GIFs (indices 0/1), masks of 0/1 or 0/255.

    Other values are refused, except in `<photo>.png` (no `_mask`): predict.py's probabilities, which serve as labels
    (pseudo-labels) cut at 0.5.
    """
    path = Path(path)
    if not path.exists():
        raise CarvanaError(f"mask {path} does not exist")
    if path.suffix.lower() == ".gif":
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "1"):
                raise CarvanaError(f"mask {path} has mode {img.mode}, expected a palette GIF")
            # mode P: the raw palette indices are 0/1; convert("L") would map them through the palette to 0/255
            values = np.asarray(img).astype(np.uint8)
    else:
        values = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if values is None:
            raise CarvanaError(f"mask {path} is not a readable image")
    top = values.max()
    if top in (0, 1) or (top == 255 and not np.any((values != 0) & (values != 255))):
        return (values > 0).astype(np.uint8)
    if not path.stem.endswith("_mask") and path.suffix.lower() == ".png":
        return (values > probs_cut(0.5)).astype(np.uint8)
    raise CarvanaError(f"mask {path} holds values other than 0/1 or 0/255 (e.g. {top}): a mask must be binary; "
                       "threshold soft masks first")


def read_probs8(path: str | os.PathLike) -> np.ndarray:
    """Read predicted probabilities as predict.py writes them: HxW uint8, 0..255 standing for probs 0..1."""
    probs8 = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if probs8 is None:
        raise CarvanaError(f"mask {path} is missing or not a readable image")
    return probs8


def probs_cut(threshold: float) -> int:
    """The cut on probs8 (0..255) for a threshold in [0, 1]: p / 255 > threshold exactly when p > the cut.

    For integers p, p > x exactly when p > floor(x): an integer comparison, 12x faster on a 1918x1280 mask than one
    against a float, which numpy makes in float64.
    """
    return math.floor(threshold * 255)


def write_mask_gif(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write an HxW {0,1} mask as a palette GIF with indices 0/1, black/white, as Carvana's train_masks."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    with atomic_path(path) as tmp:
        img.save(tmp, format="GIF")


def write_probs8(path: str | os.PathLike, probs8: np.ndarray) -> None:
    """Write HxW uint8 probabilities (0..255 for 0..1) as an 8-bit PNG."""
    assert probs8.dtype == np.uint8 and probs8.ndim == 2, (probs8.dtype, probs8.shape)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), probs8, _PNG_FAST):
            raise CarvanaError(f"cannot write {path}: check the directory exists and is writable")


def write_image(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> None:
    """Write an HxWx3 uint8 RGB photo as JPEG."""
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
