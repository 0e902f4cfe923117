"""Readers and writers of photos, masks and predicted probabilities; every writer goes through carvana.files'
temporary name and rename. Sizes are (height, width).

A photo is what a viewer displays: a phone stores a portrait shot sideways with an EXIF orientation tag, and every
reader here (image_size, read_image, decode_image) applies that tag, by one rule (PIL's ImageOps.exif_transpose, from
the header's EXIF only), so a photo's size and its pixels always agree. Masks are drawn on the displayed photo."""

import io
import math
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carvana import CarvanaError
from carvana.files import atomic_path, disk_error

# one decode thread per worker process: DataLoader workers already run in parallel
cv2.setNumThreads(1)

JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
# probability PNGs are written 100,064 times and read once: no per-row filter search and zlib level 1. On a trained
# model's 1918x1280 mask of a real photo that is 6.3 ms to write and 3.1 ms to read instead of 18.7 and 8.3 (libpng's
# adaptive filters), for a file 25% larger (175 KB); the other filters and zlib strategies were slower both ways
_PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def is_jpeg(data: bytes | np.ndarray) -> bool:
    """Whether a file's first bytes are a JPEG's, whatever its name says."""
    return bytes(data[:3]) == JPEG_START


def is_truncated(data: np.ndarray) -> bool:
    """Whether a photo's bytes (1-D uint8) are a JPEG cut short: no end-of-image marker before the zero padding some
    writers add. cv2 decodes such a file with a grey tail and only a warning, so every reader checks this itself."""
    return is_jpeg(data) and not data[-64:].tobytes().rstrip(b"\x00").endswith(JPEG_END)


ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 2-8 the stored pixels mirrored and/or rotated
# the stored pixels (HxW[xC]) -> the displayed ones, for each orientation (ImageOps.exif_transpose's table)
_UPRIGHT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
            6: lambda a: a.swapaxes(0, 1)[:, ::-1], 7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
            8: lambda a: a.swapaxes(0, 1)[::-1]}


def orientation(img: Image.Image) -> int:
    """An opened image's EXIF orientation (1..8) from its header, 1 when it has none or an invalid one, or when it is a
    TIFF: PIL gives a TIFF's size as displayed already, and both PIL and cv2 decode it upright (libtiff)."""
    if img.format == "TIFF":
        return 1
    if img.format == "PNG":  # PIL's PNG getexif decodes the whole image when no eXIf chunk precedes the pixels
        exif = Image.Exif()
        if img.info.get("exif"):
            exif.load(img.info["exif"])
    else:
        exif = img.getexif()
    value = exif.get(ORIENTATION, 1)
    return value if value in range(1, 9) else 1


def upright(pixels: np.ndarray, tag: int) -> np.ndarray:
    """Stored HxW[xC] pixels -> the displayed ones (a contiguous copy when they change) for EXIF orientation `tag`."""
    return np.ascontiguousarray(_UPRIGHT[tag](pixels)) if tag in _UPRIGHT else pixels


def decode_image(data: np.ndarray) -> np.ndarray | None:
    """A photo's bytes (1-D uint8) -> HxWx3 uint8 RGB as displayed (EXIF orientation applied), None when undecodable."""
    # cv2 applies the tag by its own EXIF parser: ignored here, so the pixels follow the same rule as image_size
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # grey and RGBA: 3 channels too
    if bgr is None:
        return None
    try:
        with Image.open(io.BytesIO(data.tobytes())) as img:
            tag = orientation(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # a header PIL cannot parse: upright
        tag = 1
    return cv2.cvtColor(upright(bgr, tag), cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo (JPEG, PNG, TIFF; grey, RGB or RGBA) as HxWx3 uint8 RGB, as displayed (EXIF orientation applied);
    a missing, unreadable or truncated file raises CarvanaError."""
    path = Path(path)
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as err:
        raise CarvanaError(f"cannot read photo {path}: {err.strerror}") from None
    if is_truncated(data):
        raise CarvanaError(f"photo {path} is truncated (no JPEG end marker): download it again")
    image = decode_image(data)
    if image is None:
        raise CarvanaError(f"photo {path} is not a readable image: replace or remove it")
    return image


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image as displayed (EXIF orientation 5-8 swap them), from its header, without decoding."""
    try:
        with Image.open(path) as img:
            return (img.width, img.height) if orientation(img) >= 5 else (img.height, img.width)
    except OSError as err:  # PIL's UnidentifiedImageError too
        raise CarvanaError(f"{path} is not a readable image ({err}): replace or remove it") from None


def mask_values(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """A mask's pixels as a viewer shows them (EXIF orientation applied): HxW uint8 grey levels of its colours (a
    palette image, as Carvana's GIFs, through its palette, so a GIF listing white first reads as it looks), and its HxW
    uint8 alpha (RGBA, LA, a PNG or GIF with a transparent colour), None when it has none or it is opaque everywhere."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "PA", "1", "L", "LA", "I", "I;16", "RGB", "RGBA"):
                raise CarvanaError(f"mask {path} has image mode {img.mode}: save it as an 8-bit grey or palette image")
            tag = orientation(img)  # a mask is read as displayed too (it rarely carries a tag), from its header
            alpha = None
            if "A" in img.getbands() or "transparency" in img.info:  # Image.has_transparency_data needs Pillow 10.1
                alpha = np.asarray((img if "A" in img.getbands() else img.convert("RGBA")).getchannel("A"))
            alpha = None if alpha is None or (alpha == 255).all() else upright(alpha, tag)
            return upright(np.asarray(img.convert("L")), tag), alpha
    except OSError as err:
        raise CarvanaError(f"mask {path} is not a readable image ({err})") from None


def binary_levels(values: np.ndarray) -> np.ndarray | None:
    """HxW uint8 levels -> HxW uint8 {0, 1} when they are 0/1 or 0/255 only, else None."""
    top = 1 if values.max() <= 1 else 255
    return (values > 0).astype(np.uint8) if ((values == 0) | (values == top)).all() else None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a binary mask as HxW uint8 in {0, 1}, by what it shows: black/white (0/255), 0/1, or a palette of black and
    white in any order. An alpha that is not opaque everywhere is the mask, its colours ignored (background-removal
    sets: white or black pixels, the object in the alpha), unless they show another black-and-white mask. A soft or
    anti-aliased mask or alpha, or colours and alpha that disagree, is a CarvanaError naming the file."""
    grey, alpha = mask_values(path)
    values, what = (grey, "grey levels") if alpha is None else (alpha, "alpha levels")
    mask = binary_levels(values)
    if mask is None:
        others = np.unique(values[(values != 0) & (values != (1 if values.max() <= 1 else 255))])
        shown = ", ".join(map(str, others[:4])) + (", ..." if len(others) > 4 else "")
        whose = "it has" if alpha is None else "its alpha, which is its mask (it is not opaque everywhere), has"
        raise CarvanaError(f"mask {path} is not black and white: {whose} {what} {shown} (of 0..255): a mask must be "
                           f"binary, threshold it first (e.g. {'value' if alpha is None else 'alpha'} > 127)")
    colours = None if alpha is None else binary_levels(grey)
    if colours is not None and 0 < colours.sum() < colours.size and (colours != mask).any():
        raise CarvanaError(f"mask {path} shows two masks: its alpha (not opaque everywhere, so read as the mask) and "
                           f"its black-and-white colours differ in {int((colours != mask).sum())} pixels: save it "
                           "opaque (the colours are the mask) or in one colour (the alpha is the mask)")
    return mask


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


def write_png(path: str | os.PathLike, image: np.ndarray, fast: bool = False) -> None:
    """Write an HxW grey, HxWx3 RGB or HxWx4 RGBA uint8 image as PNG (`fast`: the probability masks' settings)."""
    assert image.dtype == np.uint8 and image.ndim in (2, 3), (image.dtype, image.shape)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(".png", image, _PNG_FAST if fast else [])
    assert ok, image.shape
    with atomic_path(path) as tmp:
        try:
            tmp.write_bytes(data.tobytes())  # not tofile: its short write hides ENOSPC
        except OSError as err:
            raise disk_error(err, path) from None


def write_probs8(path: str | os.PathLike, probs8: np.ndarray) -> None:
    """Write HxW uint8 probabilities (0..255 for 0..1) as an 8-bit PNG."""
    assert probs8.dtype == np.uint8 and probs8.ndim == 2, (probs8.dtype, probs8.shape)
    write_png(path, probs8, fast=True)


def write_image(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> None:
    """Write an HxWx3 uint8 RGB photo as JPEG."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, image.shape
    with atomic_path(path) as tmp:
        try:
            tmp.write_bytes(data.tobytes())  # not tofile: its short write hides ENOSPC
        except OSError as err:
            raise disk_error(err, path) from None
