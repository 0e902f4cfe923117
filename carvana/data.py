"""Carvana-layout datasets: photos `{car}_{NN}.jpg`, masks `{car}_{NN}_mask.gif` or predicted `{car}_{NN}.png`."""

from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from carvana import CarvanaError
from carvana.crops import bbox_for, crop, read_bboxes
from carvana.io import read_image, read_mask, read_probs
from carvana.pseudo import select_pseudo
from carvana.transforms import input_mode, resize_arrays, train_transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Carvana's GIFs first, then predictions written by predict.py, so a prediction directory can serve as labels
MASK_PATTERNS = ("{}_mask.gif", "{}.png", "{}_mask.png", "{}.gif")


def car_id(path: str | Path) -> str:
    """The car of a photo: '0cdf5b5d0ce1' for '0cdf5b5d0ce1_05.jpg'."""
    return Path(path).stem.rsplit("_", 1)[0]


def list_images(directory: str | Path) -> list[Path]:
    """The photos of a directory, sorted; a missing or empty directory is a CarvanaError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CarvanaError(f"photo directory {directory} does not exist: check data.root / input_dir")
    images = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise CarvanaError(f"photo directory {directory} holds no .jpg photos")
    return images


def find_masks(images: list[Path], mask_dir: str | Path) -> list[Path]:
    """The mask of each photo in `mask_dir`; every missing one is reported in one line."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise CarvanaError(f"mask directory {mask_dir} does not exist: check data.train_mask_dir / data.val_mask_dir")
    masks, missing = [], []
    for image in images:
        found = [mask_dir / p.format(image.stem) for p in MASK_PATTERNS if (mask_dir / p.format(image.stem)).exists()]
        masks.append(found[0] if found else None)
        if not found:
            missing.append(image.name)
    if missing:
        raise CarvanaError(
            f"{len(missing)} photo(s) have no mask in {mask_dir} (expected {MASK_PATTERNS[0].format('<name>')}), "
            f"first: {', '.join(missing[:5])}; add the masks or remove the photos"
        )
    return masks


def check_sizes(images: list[Path], masks: list[Path]) -> None:
    """Compare every photo's size with its mask's from the file headers, and check JPEG ends, before a long run."""
    for image, mask in zip(images, masks):
        if image.suffix.lower() in (".jpg", ".jpeg") and not jpeg_complete(image):
            raise CarvanaError(f"photo {image} is truncated (no JPEG end marker): download it again or remove it")
        with Image.open(image) as img, Image.open(mask) as msk:
            if img.size != msk.size:
                raise CarvanaError(
                    f"photo {image} is {img.size[0]}x{img.size[1]} but its mask {mask} is "
                    f"{msk.size[0]}x{msk.size[1]}: photo and mask must have the same size"
                )


def jpeg_complete(path: Path) -> bool:
    """Whether a JPEG file ends with its end-of-image marker (cheap: reads the last bytes only)."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        return f.read().rstrip(b"\x00").endswith(b"\xff\xd9")


class CarvanaDataset(Dataset):
    """Photos as 3xHxW uint8 tensors with, when masks are given, 1xHxW float masks in {0, 1}.

    With a transform (training), photo and mask are transformed together. Without one (validation, prediction) the
    mask stays at full size for the metric, and the photo (or its car box) is resized here to `input_size` when it is
    set, as training's A.Resize does it (cv2 area, uint8): 16x fewer bytes through the workers and onto the device
    than the full photo. Else it stays at full size and the model pads it on the device (SegModule.predict_full).
    """

    def __init__(self, images: list[Path], masks: list[Path] | None = None, transform: A.Compose | None = None,
                 stacked: list[list[Path]] | None = None, bboxes: dict | None = None,
                 input_size: list[int] | None = None):
        self.images, self.masks, self.transform = images, masks, transform
        # second stage: per photo, the probability masks other models predicted for it, as extra input channels
        self.stacked = stacked
        # car crops (data.bboxes): the model sees each photo's box (resized to input_size without a transform)
        self.bboxes, self.input_size = bboxes, input_size
        self._seeded = None  # the seed the transform's own random state was last set from

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = read_image(self.images[index])
        item = {"name": self.images[index].stem, "size": torch.tensor(image.shape[:2])}
        mask = None if self.masks is None else read_mask(self.masks[index])
        if mask is not None and mask.shape != image.shape[:2]:
            raise CarvanaError(f"mask {self.masks[index]} is {mask.shape[::-1]}, photo is {image.shape[1::-1]}")
        extra = [read_stacked(p, image.shape[:2]) for p in self.stacked[index]] if self.stacked else []
        if self.bboxes is not None:
            bbox = bbox_for(self.bboxes, self.images[index].name, "data.bboxes")
            image, extra = crop(image, bbox), [crop(e, bbox) for e in extra]
            item["bbox"] = torch.tensor(bbox)
            if self.transform is not None and mask is not None:
                mask = crop(mask, bbox)
        if self.transform is None and self.input_size is not None:
            image, extra = resize_arrays(image, extra, tuple(self.input_size))
        if self.transform is not None:
            self._seed_transform()
            # extra channels follow the geometry (as masks, nearest) but not the colour augmentations
            targets = {"image": image, **({"mask": mask} if mask is not None else {}), **({"masks": extra} if extra
                                                                                        else {})}
            out = self.transform(**targets)
            image, mask, extra = out["image"], out.get("mask"), list(out.get("masks", []))
        if extra:
            image = np.dstack([image, *extra])
        item["image"] = _to_tensor(image)
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).float()[None]
        return item

    def _seed_transform(self) -> None:
        """albumentations 2 draws from its own random state, which global seeds do not touch: without this, `seed`
        would not reproduce the augmentations. torch's seed of this process is the run's seed in the main process,
        and in a DataLoader worker one derived from it, the worker and the rank (Lightning's seed_everything with
        workers=True): each worker draws its own reproducible sequence."""
        seed = torch.initial_seed() % 2**32
        if seed != self._seeded:
            self.transform.set_random_seed(seed)
            self._seeded = seed


def read_stacked(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A stacked-channel probability mask (HxW uint8) of the photo's size."""
    probs = read_probs(path)
    if probs.shape != size:
        raise CarvanaError(f"stacked mask {path} is {probs.shape[1]}x{probs.shape[0]}, its photo {size[1]}x{size[0]}")
    return probs


def find_stacked(images: list[Path], dirs: list[str | Path]) -> list[list[Path]]:
    """For each photo, its `<stem>.png` in every stacked directory; a missing one is reported with the count."""
    stacked, missing = [], []
    for image in images:
        paths = [Path(d) / f"{image.stem}.png" for d in dirs]
        missing += [p for p in paths if not p.exists()]
        stacked.append(paths)
    if missing:
        raise CarvanaError(f"{len(missing)} stacked mask(s) missing (data.stacked_dirs), first: {missing[0]}; predict "
                           f"them with predict.py (predict_on_val=true for training photos) or drop that directory")
    return stacked


def load_boxes(path: str | Path, images: list[Path], input_size: list[int] | None) -> dict:
    """The car boxes of data.bboxes, checked to cover every photo before training starts."""
    if input_size is None:
        raise CarvanaError("data.bboxes needs data.input_size=[h, w]: car crops differ in size and are resized to it")
    boxes = read_bboxes(path)
    missing = [p.name for p in images if p.name not in boxes]
    if missing:
        raise CarvanaError(f"bboxes.csv {path} has no row for {len(missing)} photo(s), first: {missing[0]}: rewrite "
                           f"it with python -m carvana.crops on predictions that include them")
    return boxes


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def read_folds(path: str | Path) -> pd.DataFrame:
    """The fold table, columns id (car) and fold."""
    path = Path(path)
    if not path.exists():
        raise CarvanaError(f"folds file {path} does not exist (data.folds): make it with python -m carvana.folds")
    folds = pd.read_csv(path, dtype={"id": str})
    if not {"id", "fold"} <= set(folds.columns):
        raise CarvanaError(f"folds file {path} needs the columns id,fold; it has {','.join(folds.columns)}")
    return folds


class CarvanaDataModule(pl.LightningDataModule):
    """Train on the cars of every fold but `fold`, validate on `fold`'s cars, both from `root`."""

    def __init__(self, root: str, folds: str, fold: int, image_dir: str = "train", train_mask_dir: str = "train_masks",
                 val_mask_dir: str = "train_masks", crop_size: list[int] | None = None,
                 input_size: list[int] | None = None, batch_size: int = 4, num_workers: int = 2,
                 augment: dict | None = None, stacked_dirs: list[str] | None = None, pseudo: dict | None = None,
                 bboxes: str | None = None, seed: int = 0):
        super().__init__()
        self.root, self.folds, self.fold = Path(root), folds, fold
        self.image_dir, self.train_mask_dir, self.val_mask_dir = image_dir, train_mask_dir, val_mask_dir
        self.crop_size, self.input_size = crop_size, input_size
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment or {}
        self.stacked_dirs, self.pseudo, self.seed = list(stacked_dirs or []), pseudo or {}, seed
        self.bboxes = bboxes
        self.train_set = self.val_set = None

    def split(self) -> tuple[list[Path], list[Path]]:
        """Train and validation photos of this fold; every check on the inputs happens here, before training."""
        if not self.root.is_dir():
            raise CarvanaError(f"data.root={self.root} does not exist: point data.root at the Carvana data")
        input_mode(self.crop_size, self.input_size)
        images = list_images(self.root / self.image_dir)
        folds = read_folds(self.folds)
        if self.fold not in set(folds.fold):
            raise CarvanaError(f"fold={self.fold} is not in {self.folds}: choose one of {sorted(set(folds.fold))}")
        fold_of = dict(zip(folds.id, folds.fold))
        unknown = sorted({car_id(p) for p in images} - set(fold_of))
        if unknown:
            raise CarvanaError(f"{len(unknown)} car(s) of {self.root / self.image_dir} are not in {self.folds} "
                               f"(first: {unknown[0]}): make the folds for this data with python -m carvana.folds")
        val = [p for p in images if fold_of[car_id(p)] == self.fold]
        train = [p for p in images if fold_of[car_id(p)] != self.fold]
        return train, val

    def setup(self, stage: str | None = None) -> None:
        train, val = self.split()
        train_masks = find_masks(train, self.root / self.train_mask_dir)
        val_masks = find_masks(val, self.root / self.val_mask_dir)
        if self.pseudo.get("dir"):
            # test photos labelled by an earlier prediction join the training set only; validation stays real
            pseudo_images, pseudo_masks = select_pseudo(self.root / self.pseudo.get("image_dir", "test"),
                                                        self.pseudo, len(train), self.seed)
            train, train_masks = train + pseudo_images, train_masks + pseudo_masks
        check_sizes(train + val, train_masks + val_masks)
        self.image_size = list(Image.open(val[0]).size[::-1]) if val else None
        stacked = self.stacked_dirs and find_stacked(train + val, self.stacked_dirs)
        boxes = self.bboxes and load_boxes(self.bboxes, train + val, self.input_size)
        transform = train_transform(self.crop_size, self.input_size, self.augment)
        self.train_set = CarvanaDataset(train, train_masks, transform, stacked and stacked[:len(train)], boxes or None)
        # the metric is Kaggle's, at 1918x1280, whatever the input mode
        self.val_set = CarvanaDataset(val, val_masks, stacked=stacked and stacked[len(train):], bboxes=boxes or None,
                                      input_size=self.input_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), drop_last=shuffle and len(dataset) > self.batch_size,
                          persistent_workers=self.num_workers > 0)
