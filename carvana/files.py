"""Files (and folders) written whole or not at all: a temporary sibling renamed into place, the temporaries that killed
processes left behind, and a folder proved writable before long work starts. Every writer of the project goes through
here."""

import contextlib
import errno
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from carvana import CarvanaError

# atomic_path's temporary names: .<stem>.tmp-<host>-<pid><suffix>; the host keeps ranks on other nodes' files safe
_TEMPORARY = re.compile(r"^\..*\.tmp-(?P<host>[^/]+)-(?P<pid>\d+)(\.[A-Za-z0-9]+)?$")
HOST = socket.gethostname().replace("-", "_")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block ends without an error. A full
    disk is a CarvanaError that says so, and leaves the previous file as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{HOST}-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise CarvanaError(f"the disk is full: {path} was not written (free space on {path.parent}, or write "
                               "elsewhere)") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty temporary sibling folder of `path`; put it in `path`'s place only if the block ends without an
    error: a folder already at `path` is replaced then, not before. A full disk is a CarvanaError that says so."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}")
    old = path.with_name(f".{path.name}.old.tmp-{HOST}-{os.getpid()}")
    try:
        tmp.mkdir()
        yield tmp
        if path.exists():
            os.replace(path, old)  # rename(2) does not replace a folder that holds files: move it aside first
        try:
            os.replace(tmp, path)
        except OSError:
            if old.exists():
                os.replace(old, path)
            raise
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise CarvanaError(f"the disk is full: {path} was not written (free space on {path.parent}, or write "
                               "elsewhere)") from None
        raise
    finally:
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether a file (or folder) is atomic_path's (atomic_dir's) temporary (a reader of a folder skips it)."""
    return _TEMPORARY.match(Path(path).name) is not None


def remove_dead_temporaries(directory: str | os.PathLike) -> int:
    """Remove the temporaries that processes of this host killed before their rename left in `directory` (kill -9,
    a node lost); those of live processes stay. Returns how many were removed."""
    removed = 0
    for path in Path(directory).glob(".*.tmp-*") if Path(directory).is_dir() else []:
        match = _TEMPORARY.match(path.name)
        if match and match["host"] == HOST and not _alive(int(match["pid"])):
            if path.is_dir():  # atomic_dir's
                shutil.rmtree(path, ignore_errors=True)
            else:
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


def check_writable_dir(directory: str | os.PathLike, key: str) -> Path:
    """Create `directory` if needed and prove it takes a file, before any long work starts; else a CarvanaError
    naming the key and the path (a file in the way, no permission, a read-only file system, a full disk)."""
    directory = Path(directory)
    probe = directory / f".write-check.tmp-{HOST}-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)  # a byte is not enough to see a full disk
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise CarvanaError(f"{key}={directory}: the disk is full: free space there, or choose another folder"
                               ) from None
        raise CarvanaError(f"{key}={directory} cannot hold the output ({err.strerror or err}): choose a writable "
                           "folder") from None
    return directory


def disk_error(err: OSError, path: str | os.PathLike) -> CarvanaError:
    """The one line for an OSError while writing `path`: the disk is full, or the folder is not writable."""
    if err.errno == errno.ENOSPC:
        return CarvanaError(f"the disk is full: {path} was not written (free space on {Path(path).parent})")
    return CarvanaError(f"cannot write {path} ({err.strerror or err}): check the folder is writable")
