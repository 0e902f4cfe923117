"""Every photo decoded all through before a long run (training or prediction), and every mask read: a file that is
not an image, a truncated JPEG, one whose image data is corrupt, a mask of another size than its photo or with values
other than black and white is named in one line before any work starts. The HTTP service checks each upload with
the same decoder (PhotoChecker): one photo check for every reader.

libjpeg decodes corrupt data with a mere warning on the process's stderr (what cv2 and PIL then return looks like a
photo): the warnings are read back from file descriptor 2, so the check runs in processes of its own, fresh Python
interpreters fed the paths on stdin. Not multiprocessing: a forked worker of a process with threads (a SLURM job under
submitit) can wait forever on a lock copied while another thread held it, and a spawned one re-runs a calling script
that has no `if __name__ == "__main__"` guard.
"""

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from carvana import CarvanaError
from carvana.data.io import image_size, is_truncated, read_mask


class Checked(NamedTuple):
    """A photo that passed the check: its (height, width), and whether its mask holds any car (None: no mask)."""

    size: tuple[int, int]
    car: bool | None


def check_photo(path: str | os.PathLike) -> tuple[int, int]:
    """Decode a photo all through, cheaply -> its (height, width); a bad photo is a CarvanaError naming it. Call it in
    a process of its own (check_photos does): it reads libjpeg's warnings from file descriptor 2."""
    path = Path(path)
    size = image_size(path)
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as err:
        raise CarvanaError(f"photo {path} is not readable ({err.strerror})") from None
    why = corruption(data)
    if why:
        raise CarvanaError(f"photo {path} is corrupt ({why}): download it again or remove it")
    return size


def corruption(data: np.ndarray) -> str | None:
    """Why a photo's bytes (1-D uint8) do not decode cleanly (libjpeg's first warning, truncated, undecodable), or None.
    Call it in a process of its own (check_photos and PhotoChecker do): it reads file descriptor 2.

    At 1/8 scale in grey the decoder still reads every coefficient: 1.6 ms a 1918x1280 photo instead of 17.
    """
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
    if decoded is None or warnings or is_truncated(data):
        return warnings.splitlines()[0] if warnings else "truncated or undecodable"
    return None


def check_pair(photo: str | os.PathLike, mask: str | os.PathLike | None) -> Checked:
    """check_photo, then the mask read by its colours (carvana.data.io.read_mask: binary) and of the photo's size."""
    size = check_photo(photo)
    if mask is None:
        return Checked(size, None)
    values = read_mask(mask)
    if values.shape != size:
        raise CarvanaError(f"photo {photo} is {size[0]}x{size[1]} but its mask {mask} is {values.shape[0]}x"
                           f"{values.shape[1]} (height x width): photo and mask must have the same size")
    return Checked(size, bool(values.any()))


def check_photos(paths: list[Path], workers: int = 1, masks: list[Path] | None = None) -> Iterator[Checked]:
    """check_pair on every photo (and its mask), in order, in `workers` fresh Python processes; the first bad photo
    or mask raises its CarvanaError. Each worker takes a contiguous share of the photos."""
    # any file name, also one that is not UTF-8, travels as bytes
    masks = masks or [None] * len(paths)
    pairs = [os.fsencode(p) + b"\0" + (os.fsencode(m) if m else b"") for p, m in zip(paths, masks)]
    if not pairs:
        return
    share = -(-len(pairs) // max(1, min(workers, len(pairs))))
    shares = [pairs[i:i + share] for i in range(0, len(pairs), share)]
    env = _worker_env()
    procs = []
    try:
        for part in shares:
            proc = subprocess.Popen([sys.executable, "-c", "from carvana.data.photo_check import _worker; _worker()"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            procs.append(proc)
            proc.stdin.write(b"\0".join(part) + b"\0")  # the worker reads all of it before it writes anything
            proc.stdin.close()
        for part, proc in zip(shares, procs):
            done = 0
            for line in proc.stdout:
                text = line.decode(errors="replace")
                if text.startswith("!"):
                    raise CarvanaError(text[1:].strip())
                height, width, car = text.split()
                done += 1
                yield Checked((int(height), int(width)), None if car == "-" else car == "1")
            if proc.wait() != 0 or done != len(part):
                where = os.fsdecode(part[min(done, len(part) - 1)].split(b"\0")[0])
                raise CarvanaError(f"checking the photos stopped at {where} (worker exit code {proc.returncode}): "
                                   "see the error above")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


def _worker_env() -> dict[str, str]:
    """The environment of a worker: this checkout importable, any file name printable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                                         *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PYTHONIOENCODING": "utf-8:backslashreplace"}


class PhotoChecker:
    """corruption() for uploaded bytes (the HTTP service's), in one long-lived Python process of its own, started at the
    first check and again after it died: libjpeg's warnings stay out of the caller's stderr. One check at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def check(self, data: bytes) -> str | None:
        """Why the photo's bytes do not decode cleanly, or None (as corruption() says)."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                start = "from carvana.data.photo_check import _upload_worker; _upload_worker()"
                self.proc = subprocess.Popen([sys.executable, "-c", start], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, env=_worker_env())
            try:
                self.proc.stdin.write(len(data).to_bytes(8, "big"))
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                answer = self.proc.stdout.readline().decode(errors="replace").rstrip("\n")
            except OSError:
                answer = ""
            if not answer:
                self._stop()
                return "the photo check's process died decoding it"
            return None if answer == "ok" else answer[1:]

    def close(self) -> None:
        """End the worker (it exits at the end of its input)."""
        with self.lock:
            self._stop()

    def _stop(self) -> None:
        if self.proc is None:
            return
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc = None


def _upload_worker() -> None:
    """PhotoChecker's worker: photos on stdin, each its length (8 bytes, big-endian) then its bytes; one line each on
    stdout: `ok`, or `!` and why it is corrupt."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while len(head := stdin.read(8)) == 8:
        why = corruption(np.frombuffer(stdin.read(int.from_bytes(head, "big")), np.uint8))
        stdout.write(b"ok\n" if why is None else ("!" + " ".join(why.split())).encode() + b"\n")
        stdout.flush()


def _worker() -> None:
    """check_photos' worker: NUL-separated (photo, mask or empty) pairs on stdin; one `height width car` line per photo
    on stdout (car: 1, 0, or - without a mask), or `!message` for the first bad one."""
    fields = sys.stdin.buffer.read().split(b"\0")[:-1]
    for photo, mask in zip(fields[::2], fields[1::2]):
        try:
            checked = check_pair(os.fsdecode(photo), os.fsdecode(mask) if mask else None)
        except CarvanaError as err:
            print("!" + " ".join(str(err).split()), flush=True)
            return
        car = "-" if checked.car is None else int(checked.car)
        print(*checked.size, car, flush=True)
