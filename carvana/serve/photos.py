"""An upload's photo in (its bytes counted as they arrive), the response's bytes out: decoded as
carvana.data.io.read_image reads a photo file (the same pixels, so the same mask as predict.py's), encoded as
predict.py's writer writes its files."""

import io

import cv2
import numpy as np
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message, Receive

from carvana.data.io import decode_image, is_truncated, probs_cut
from carvana.data.photo_check import PhotoChecker
from carvana.data.rle import rle_encode
from carvana.predict.writer import cutout
from carvana.serve.errors import BadRequest, NotAPhoto, TooLarge

OUTPUTS = {"png": "image/png", "cutout": "image/png", "rle": "text/plain"}
# predict.py's probability PNGs: no filter search, zlib level 1 (carvana.data.io's measured choice)
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def upload_limit(max_pixels: int) -> int:
    """Bytes above which an upload cannot be a photo of max_pixels (8 bytes a pixel: 16-bit RGBA, uncompressed)."""
    return 8 * max_pixels + (1 << 20)


def count_bytes(receive: Receive, limit: int, max_pixels: int) -> Receive:
    """`receive` whose body past `limit` bytes is TooLarge, counted as it arrives: a chunked upload has no
    Content-Length to refuse it by."""
    total = 0

    async def receive_counted() -> Message:
        nonlocal total
        message = await receive()
        total += len(message.get("body", b""))
        if total > limit:
            raise TooLarge(f"the upload passed {limit} bytes: more than a photo of max_pixels={max_pixels} takes; "
                           "send the photo alone, smaller")
        return message

    return receive_counted


async def read_image_field(request: Request, max_pixels: int) -> bytes:
    """The bytes of the multipart file `image`, at most upload_limit(max_pixels) of body read (TooLarge past it,
    BadRequest without the field)."""
    counted = Request(request.scope, count_bytes(request.receive, upload_limit(max_pixels), max_pixels))
    async with counted.form(max_files=1, max_fields=8) as form:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest("no file in the multipart field 'image': send the photo as -F image=@photo.jpg")
        return await upload.read()


def decode_photo(data: bytes, max_pixels: int, checker: PhotoChecker) -> np.ndarray:
    """An upload's bytes -> HxWx3 uint8 RGB as read_image reads them (JPEG, PNG, TIFF; grey, RGB or RGBA; EXIF
    orientation applied). Not a readable image, truncated, corrupt (predict.py's photo check), empty: NotAPhoto (422);
    over max_pixels: TooLarge (413), before any decoding (the size is read from the header)."""
    if not data:
        raise NotAPhoto("the image field is empty: send a photo (JPEG, PNG or TIFF)")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError:
        raise TooLarge(f"the photo has over {2 * Image.MAX_IMAGE_PIXELS} pixels, more than "
                              f"max_pixels={max_pixels}") from None
    except OSError:  # PIL's UnidentifiedImageError too
        raise NotAPhoto(f"the upload ({len(data)} bytes) is not a readable image: send a photo (JPEG, PNG or "
                              "TIFF)") from None
    if width * height > max_pixels:
        raise TooLarge(f"the photo is {height}x{width} (height x width) = {width * height} pixels, more than "
                              f"max_pixels={max_pixels}: make it smaller")
    buffer = np.frombuffer(data, np.uint8)
    if is_truncated(buffer):
        raise NotAPhoto("the photo is truncated (no JPEG end marker): send the whole file")
    why = checker.check(data)  # libjpeg decodes corrupt data with a mere warning: predict.py refuses such a photo
    if why:
        raise NotAPhoto(f"the photo is corrupt ({why}): send an intact copy")
    image = decode_image(buffer)  # read_image's decoder: displayed pixels (EXIF orientation), 3 channels
    if image is None:
        raise NotAPhoto(f"the photo ({height}x{width}, height x width, by its header) cannot be decoded: truncated "
                        "or corrupt")
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
