"""Where a data set's files are and what their names mean: the photos of a folder, the mask of each photo, the group a
photo belongs to (Carvana's car: all 16 angles of a car share a fold) and its angle."""

import os
import re
import sys
from pathlib import Path

from carvana import CarvanaError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
# Carvana's GIFs first, then PNG masks, then masks named as their photo (a folder of masks, or predict.py's output)
MASK_PATTERNS = ("{}_mask.gif", "{}_mask.png", "{}.png", "{}.gif")
CAR_GROUP = r"^(.+)_\d+$"  # Carvana's car id: '0cdf5b5d0ce1' of '0cdf5b5d0ce1_05'
EACH_PHOTO = r"^(.*)$"  # data.group=null: each photo is its own group
_ANGLE = re.compile(r"^.+_(\d+)$")
KAGGLE_NAME = re.compile(r"^([0-9a-f]{12})_(\d\d)$")  # Kaggle's photo name: <car id>_<angle>, '0cdf5b5d0ce1_05'


def car_id(path: str | os.PathLike) -> str:
    """The car of a photo in Kaggle's naming: '0cdf5b5d0ce1' for '0cdf5b5d0ce1_05.jpg'."""
    return Path(path).stem.rsplit("_", 1)[0]


def angle_of(path: str | os.PathLike) -> int | None:
    """The turntable angle of a photo, 1..16: 5 for '0cdf5b5d0ce1_05.jpg'; None for a name without one."""
    match = _ANGLE.match(Path(path).stem)
    return int(match[1]) if match else None


def group_pattern(regex: str | None, key: str = "data.group") -> re.Pattern:
    """The compiled group regex (its first group names a photo's group); null: each photo is its own group."""
    try:
        pattern = re.compile(regex if regex is not None else EACH_PHOTO)
    except re.error as err:
        raise CarvanaError(f"{key}={regex!r} is not a regular expression ({err})") from None
    if pattern.groups < 1:
        raise CarvanaError(f"{key}={regex!r} has no group: write the part that names the group in parentheses, "
                           r"e.g. '^(.+)_\d+$'")
    return pattern


def group_of(path: str | os.PathLike, pattern: re.Pattern, key: str = "data.group") -> str:
    """The group of a photo: the first group of `pattern` matched on its name without suffix."""
    match = pattern.search(Path(path).stem)
    if match is None or match[1] is None:
        raise CarvanaError(f"photo {Path(path).name} does not match {key}={pattern.pattern!r}: fix the regex, or "
                           "rename the photo")
    return match[1]


def group_unit(photos: list[str | os.PathLike], groups: list[str]) -> str:
    """What the photos' `groups` are, from the names alone (not the regex's text): 'car' when every photo has
    Kaggle's name (<12 hex car id>_<2-digit angle>) and its group is that car id (tables by car and by angle), else
    'group' (own data, or Carvana's photos grouped otherwise)."""
    names = [KAGGLE_NAME.match(Path(p).stem) for p in photos]
    return "car" if names and all(m and m[1] == g for m, g in zip(names, groups, strict=True)) else "group"


def first_process() -> bool:
    """Whether this is the only or the first process of a run (DDP's rank 0): notes are printed once."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def note_left_out(directory: Path, names: list[str], what: str) -> None:
    """One `warning:` line on stderr counting and naming the files of `directory` a tool leaves out, and why."""
    if names and first_process():
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        print(f"warning: {len(names)} file(s) in {directory} left out, {what}: {shown}", file=sys.stderr, flush=True)


def list_images(directory: str | os.PathLike, key: str = "data.root") -> list[Path]:
    """The photos of a directory, sorted; other files (not hidden ones) are counted and named in one warning line; a
    missing or empty directory, or a name that is not valid UTF-8, is a CarvanaError naming `key`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CarvanaError(f"photo directory {directory} does not exist: check {key}")
    entries = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not images:
        raise CarvanaError(f"photo directory {directory} holds no photos ({', '.join(IMAGE_SUFFIXES)}): check {key}")
    for image in images:
        try:
            image.name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(image.name).decode("utf-8", errors="replace")
            raise CarvanaError(f"photo {directory / shown} has a name that is not valid UTF-8: rename it") from None
    stems: dict[str, Path] = {}
    for image in images:  # a.jpg and a.png: one mask a.png, one prediction a.png for both
        if image.stem in stems:
            raise CarvanaError(f"photos {stems[image.stem].name} and {image.name} in {directory} share the name "
                               f"{image.stem!r}: their masks and predictions would be one file; rename one")
        stems[image.stem] = image
    chosen = set(images)
    others = [p.name + ("/" if p.is_dir() else "") for p in entries if p not in chosen]
    note_left_out(directory, others, f"not photos ({', '.join(IMAGE_SUFFIXES)})")
    return images


def expected_masks() -> str:
    """The mask names a photo may have, for messages: '<name>_mask.gif, <name>_mask.png, <name>.png or <name>.gif'."""
    names = [p.format("<name>") for p in MASK_PATTERNS]
    return ", ".join(names[:-1]) + " or " + names[-1]


def find_masks(images: list[Path], mask_dir: str | os.PathLike, key: str = "data.train_mask_dir") -> list[Path]:
    """The mask of each photo in `mask_dir` (one of MASK_PATTERNS); a photo without one is reported in one line with
    their count, a photo with two (`a_mask.gif` and `a.png`) is refused naming both."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise CarvanaError(f"mask directory {mask_dir} does not exist: check {key}")
    present = set(os.listdir(mask_dir))
    masks, missing = [], []
    for image in images:
        found = [name for p in MASK_PATTERNS if (name := p.format(image.stem)) in present]
        if len(found) > 1:
            raise CarvanaError(f"photo {image.name} has {len(found)} masks in {mask_dir}: {' and '.join(found)}; "
                               f"remove or rename all but one (a photo's mask is one of {expected_masks()})")
        masks.append(mask_dir / found[0] if found else None)
        if not found:
            missing.append(image.name)
    if missing:
        raise CarvanaError(f"{len(missing)} photo(s) have no mask in {mask_dir} (expected {expected_masks()} for "
                           f"photo <name>.jpg), first: {', '.join(missing[:5])}; add the masks or remove the photos")
    return masks
