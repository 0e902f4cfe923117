"""An uploaded photo's bytes in, the response's bytes out: decoded as carvana.data.io.read_image reads a photo file
(the same pixels, so the same mask as predict.py's), encoded as predict.py's writer writes its files."""

import io

import cv2
import numpy as np
from PIL import Image

from carvana.data.io import JPEG_END, decode_image, is_jpeg, probs_cut
from carvana.data.photo_check import PhotoChecker
from carvana.data.rle import rle_encode
from carvana.predict.writer import cutout

OUTPUTS = {"png": "image/png", "cutout": "image/png", "rle": "text/plain"}
# predict.py's probability PNGs: no filter search, zlib level 1 (carvana.data.io's measured choice)
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


class PhotoError(Exception):
    """An upload the service refuses: `status` (HTTP) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_photo(data: bytes, max_pixels: int, checker: PhotoChecker) -> np.ndarray:
    """An upload's bytes -> HxWx3 uint8 RGB as read_image reads them (JPEG, PNG, TIFF; grey, RGB or RGBA; EXIF
    orientation applied). Not a readable image, truncated, corrupt (predict.py's photo check), empty: PhotoError 422;
    over max_pixels: 413, before any decoding (the size is read from the header)."""
    if not data:
        raise PhotoError(422, "the image field is empty: send a photo (JPEG, PNG or TIFF)")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError:
        raise PhotoError(413, f"the photo has over {2 * Image.MAX_IMAGE_PIXELS} pixels, more than "
                              f"max_pixels={max_pixels}") from None
    except OSError:  # PIL's UnidentifiedImageError too
        raise PhotoError(422, f"the upload ({len(data)} bytes) is not a readable image: send a photo (JPEG, PNG or "
                              "TIFF)") from None
    if width * height > max_pixels:
        raise PhotoError(413, f"the photo is {width}x{height} = {width * height} pixels, more than "
                              f"max_pixels={max_pixels}: make it smaller")
    buffer = np.frombuffer(data, np.uint8)
    # cv2 decodes a truncated JPEG with a grey tail and only a warning: read_image's end-of-image check
    if is_jpeg(buffer) and not buffer[-64:].tobytes().rstrip(b"\x00").endswith(JPEG_END):
        raise PhotoError(422, "the photo is truncated (no JPEG end marker): send the whole file")
    why = checker.check(data)  # libjpeg decodes corrupt data with a mere warning: predict.py refuses such a photo
    if why:
        raise PhotoError(422, f"the photo is corrupt ({why}): send an intact copy")
    image = decode_image(buffer)  # read_image's decoder: displayed pixels (EXIF orientation), 3 channels
    if image is None:
        raise PhotoError(422, f"the photo ({width}x{height} by its header) cannot be decoded: truncated or corrupt")
    return image


def encode_png(image: np.ndarray, fast: bool = False) -> bytes:
    """An HxW grey or HxWx4 RGBA uint8 image -> PNG bytes as carvana.data.io.write_png writes them."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(".png", image, PNG_FAST if fast else [])
    assert ok, image.shape
    return data.tobytes()


def encode(output: str, image: np.ndarray, probs8: np.ndarray, threshold: float, cutout_alpha: str,
           cutout_colour: str) -> bytes:
    """The response body of ?output=: `png` the probs8 PNG, `cutout` the RGBA cut-out PNG, `rle` Kaggle's RLE of the
    mask (probability > threshold), as predict.py's write=png, write=cutout and write=rle."""
    cut = probs_cut(threshold)
    if output == "png":
        return encode_png(probs8, fast=True)
    if output == "cutout":
        return encode_png(cutout(image, probs8, cutout_alpha, cut, cutout_colour))
    assert output == "rle", output
    return rle_encode(probs8 > cut).encode()
