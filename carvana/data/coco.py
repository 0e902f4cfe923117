"""Masks from COCO annotations, as CVAT and Label Studio export them (data=coco): every photo the JSON lists, under
data.root as its file_name says, with the union of its objects as its mask, drawn in memory when the photo is read
(polygons, uncompressed RLE as CVAT writes crowd objects, compressed RLE). The whole file is checked when it is read.

No mask files are written: drawing a real 1918x1280 car mask from its polygon (3,270 points) or RLE took 25 ms here,
reading the same mask's GIF 46 ms."""

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from carvana import CarvanaError
from carvana.data.io import image_size, orientation, read_mask, write_png
from carvana.files import check_writable_dir
from carvana.progress import progress

ANNOTATIONS_KEY = "data.annotations"


class CocoMask(NamedTuple):
    """A photo's mask as the segmentations of its objects (none: an empty mask), drawn when read."""

    source: str  # the annotations file and photo, for messages
    height: int
    width: int
    segmentations: tuple

    def read(self) -> np.ndarray:
        """The union of the objects -> HxW uint8 {0, 1}."""
        mask = np.zeros((self.height, self.width), np.uint8)
        for segmentation in self.segmentations:
            mask |= coco_mask.decode(to_rle(segmentation, self.height, self.width))
        return mask


class CocoSet(NamedTuple):
    """The photos of an annotations file (sorted) and the mask of each."""

    images: list[Path]
    masks: dict[Path, CocoMask]

    def masks_of(self, images: Iterable[Path]) -> list[CocoMask]:
        """The masks of these photos, in their order."""
        return [self.masks[p] for p in images]


def read_mask_source(source: Path | CocoMask) -> np.ndarray:
    """A photo's true mask, from its file (carvana.data.io.read_mask) or its COCO objects -> HxW uint8 {0, 1}."""
    return source.read() if isinstance(source, CocoMask) else read_mask(source)


def to_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """A COCO segmentation (polygons [[x0, y0, x1, y1, ...], ...], or RLE with counts a list or a string) -> one
    compressed RLE of size (height, width); the polygons of one object are joined."""
    if isinstance(segmentation, list):
        return coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return coco_mask.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}


def annotations_path(annotations: str | os.PathLike, root: str | os.PathLike) -> Path:
    """data.annotations: under data.root (or absolute), as the photos are; a missing file is refused."""
    path = Path(root) / annotations
    if not path.is_file():
        raise CarvanaError(f"{ANNOTATIONS_KEY}={annotations}: no such file {path} (the COCO JSON, under data.root or "
                           "an absolute path): check data.annotations and data.root")
    return path


def load_json(path: Path) -> dict:
    """The annotations file's top level, with its images and annotations lists."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CarvanaError(f"{ANNOTATIONS_KEY}={path} is not a readable JSON file ({err}): export COCO JSON again")
    if not isinstance(content, dict) or not all(isinstance(content.get(k), list) for k in ("images", "annotations")):
        raise CarvanaError(f"{ANNOTATIONS_KEY}={path} is not COCO: it needs the lists 'images' and 'annotations' "
                           "(export as COCO 1.0 from CVAT, or COCO from Label Studio)")
    return content


def chosen_categories(content: dict, categories: list | None, path: Path) -> set | None:
    """The category ids data.categories names (by name or id); null: None, every category."""
    if categories is None:
        return None
    known = {c.get("name"): c.get("id") for c in content.get("categories") or [] if isinstance(c, dict)}
    ids = set(known.values())
    unknown = [c for c in categories if c not in known and c not in ids]
    if unknown:
        raise CarvanaError(f"data.categories: {unknown[0]!r} is not a category of {path}: choose among "
                           f"{', '.join(map(str, known)) or 'none (the file lists no categories)'}, or null for all")
    return {known.get(c, c) for c in categories}


def image_entries(content: dict, root: Path, path: Path) -> dict:
    """The images of the file -> {id: (photo path, height, width)}; an entry without id, file_name, width and height,
    a repeated id or photo name, a photo missing under `root` or of another size than the entry says is refused."""
    entries, stems, missing = {}, {}, []
    for entry in content["images"]:
        if not isinstance(entry, dict) or not all(k in entry for k in ("id", "file_name", "width", "height")):
            raise CarvanaError(f"{ANNOTATIONS_KEY}={path}: image entry {str(entry)[:80]} lacks one of id, file_name, "
                               "width, height: export COCO again")
        photo = root / entry["file_name"]
        if entry["id"] in entries:
            raise CarvanaError(f"{ANNOTATIONS_KEY}={path}: image id {entry['id']} is listed twice: export COCO again")
        if photo.stem in stems:
            raise CarvanaError(f"{ANNOTATIONS_KEY}={path}: photos {stems[photo.stem]} and {entry['file_name']} share "
                               f"the name {photo.stem!r}: their predictions would be one file; rename one")
        stems[photo.stem] = entry["file_name"]
        entries[entry["id"]] = (photo, entry["height"], entry["width"])
        if not photo.is_file():
            missing.append(entry["file_name"])
    if missing:
        raise CarvanaError(f"{ANNOTATIONS_KEY}={path}: {len(missing)} of its {len(entries)} images are not under "
                           f"data.root/data.image_dir={root} (first: {missing[0]}): set data.image_dir to the folder "
                           "under data.root that the file_name values start from (CVAT's COCO 1.0 export: images or "
                           "images/default), or remove those images from the JSON")
    return {key: (photo, *displayed_size(photo, h, w, path)) for key, (photo, h, w) in entries.items()}


def displayed_size(photo: Path, height: int, width: int, path: Path) -> tuple[int, int]:
    """A photo's (height, width) as displayed (EXIF orientation applied), which its COCO entry must say. Annotation
    tools draw on the displayed photo (CVAT since its PR #4529, Label Studio), but Label Studio's COCO export writes
    the stored size (its issue #6608), swapped for a photo its tag turns: taken too, the objects drawn as displayed."""
    found = image_size(photo)
    with Image.open(photo) as img:
        turned = orientation(img) >= 5
    if found == (height, width) or (turned and found == (width, height)):
        return found
    raise CarvanaError(f"{ANNOTATIONS_KEY}={path}: image {photo} is {found[0]}x{found[1]} (height x width) but the "
                       f"JSON says {height}x{width}: annotate the file on disk, or export again (a photo's size is "
                       "as displayed, its EXIF orientation applied)")


def check_segmentation(annotation: dict, height: int, width: int, where: str) -> None:
    """Refuse a segmentation pycocotools cannot draw at the photo's size: missing (a box only), a polygon of fewer
    than 3 points, an RLE of another size or whose counts do not cover the photo."""
    segmentation = annotation.get("segmentation")
    if not segmentation:
        raise CarvanaError(f"{where} has no segmentation (a box only?): a mask needs polygons or RLE; draw it as a "
                           "polygon or mask, or leave its category out with data.categories")
    if isinstance(segmentation, list):
        bad = [p for p in segmentation if not isinstance(p, list) or len(p) < 6 or len(p) % 2]
        if bad:
            raise CarvanaError(f"{where} has a polygon of {len(bad[0]) if isinstance(bad[0], list) else 0} "
                               "coordinates: a polygon is [x0, y0, x1, y1, x2, y2, ...], 3 points or more")
        return
    size = segmentation.get("size") if isinstance(segmentation, dict) else None
    if size != [height, width] or "counts" not in segmentation:
        raise CarvanaError(f"{where}: its RLE is of size {size} (height, width), its image {height}x{width} (height x "
                           "width): an RLE has 'size' [height, width] of its image and 'counts'")
    counts = segmentation["counts"]
    if isinstance(counts, list) and sum(counts) != height * width:
        raise CarvanaError(f"{where}: its RLE counts cover {sum(counts)} pixels, its image {height * width}")


def read_coco(annotations: str | os.PathLike, root: str | os.PathLike, categories: list | None = None,
              image_dir: str | os.PathLike = ".") -> CocoSet:
    """A COCO annotations file (under `root`, or absolute) checked whole -> its photos (under root/image_dir, as their
    file_name says) and their masks; an annotation of an image the file does not list is refused, an image without
    objects has an empty mask."""
    root = Path(root)
    path = annotations_path(annotations, root)
    content = load_json(path)
    chosen = chosen_categories(content, categories, path)
    entries = image_entries(content, root / image_dir, path)
    objects: dict = {image_id: [] for image_id in entries}
    for annotation in content["annotations"]:
        if not isinstance(annotation, dict) or annotation.get("image_id") not in entries:
            known = annotation if isinstance(annotation, dict) else {}
            raise CarvanaError(f"{ANNOTATIONS_KEY}={path}: annotation id {known.get('id')} is of image id "
                               f"{known.get('image_id')}, which 'images' does not list: export COCO again with its "
                               "images, or remove the annotation")
        if chosen is not None and annotation.get("category_id") not in chosen:
            continue
        photo, height, width = entries[annotation["image_id"]]
        where = f"{ANNOTATIONS_KEY}={path}: annotation id {annotation.get('id')} of {photo.name}"
        check_segmentation(annotation, height, width, where)
        objects[annotation["image_id"]].append(annotation["segmentation"])
    masks = {photo: CocoMask(f"{path} ({photo.name})", height, width, tuple(objects[image_id]))
             for image_id, (photo, height, width) in entries.items()}
    return CocoSet(sorted(masks), masks)


def write_masks(root: str, annotations: str, categories: list | None, output_dir: str) -> int:
    """Check the whole COCO file, then write <output_dir>/<photo name>.png (HxW uint8 0/255) for each photo it lists
    -> how many were written."""
    coco = read_coco(annotations, root, categories)
    out = check_writable_dir(output_dir, "output_dir")
    for photo in progress(coco.images, "writing the masks", len(coco.images)):
        write_png(out / f"{photo.stem}.png", coco.masks[photo].read() * 255)
    return len(coco.images)
