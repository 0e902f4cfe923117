"""Carvana-layout datasets: photos `{car}_{NN}.jpg`, masks `{car}_{NN}_mask.gif` or predicted `{car}_{NN}.png`."""

from collections.abc import Callable, Iterator
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from carvana import CarvanaError
from carvana.crops import bbox_for, read_bboxes
from carvana.geometry import Box, Geometry, cut_box
from carvana.hardware import default_workers
from carvana.io import IMAGE_SUFFIXES, MASK_PATTERNS, car_id, check_photos, read_image, read_mask, read_probs8
from carvana.progress import progress
from carvana.pseudo import select_pseudo
from carvana.transforms import train_transform

MASKS_CHECKED = 8  # masks read before training: none with a car means a wrong folder or format


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


def check_files(images: list[Path], masks: list[Path], workers: int = 1) -> None:
    """Before a long run: every photo decodes whole (carvana.io.check_photo: a random or garbled file, a truncated or
    corrupt JPEG), has its mask's size, and the first masks are not all empty (a wrong folder, or a format read as
    background)."""
    sizes = progress(check_photos(images, workers), "checking the photos", len(images))
    for image, mask, size in zip(images, masks, sizes):
        with Image.open(mask) as msk:
            if msk.size != size:
                raise CarvanaError(f"photo {image} is {size[0]}x{size[1]} but its mask {mask} is "
                                   f"{msk.size[0]}x{msk.size[1]}: photo and mask must have the same size")
    checked = masks[:MASKS_CHECKED]
    if checked and not any(read_mask(m).any() for m in checked):
        raise CarvanaError(f"the first {len(checked)} masks (e.g. {checked[0]}) hold no car at all: check "
                           "data.train_mask_dir and the masks' format (0/1 or 0/255, or Carvana's GIFs)")


class CarvanaDataset(Dataset):
    """Photos as the network sees them, 3(+k stacked)xhxw uint8, with their {0,1} masks as 1xHxW float.

    With a transform (training) photo, mask and stacked channels are transformed together: the geometry's sizing, then
    augmentations drawn from the seed the sampler gives with the index. Without one (validation) the photo goes
    through `geometry.to_input` and the mask stays at full size, for Kaggle's metric at 1918x1280.
    """

    def __init__(self, images: list[Path], masks: list[Path] | None = None, geometry: Geometry | None = None,
                 transform: A.Compose | None = None, stacked: list[list[Path]] | None = None,
                 boxes: dict[str, Box] | None = None):
        self.images, self.masks, self.transform = images, masks, transform
        self.geometry = geometry or Geometry()
        # second stage: per photo, the probability masks other models predicted for it, as extra input channels
        self.stacked = stacked
        # car boxes (data.bboxes): the model sees each photo's box
        self.boxes = boxes

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> dict:
        """The photo (HxWx3 uint8 RGB), mask (HxW {0,1} or None), stacked channels and box of photo `index`."""
        path = self.images[index]
        image = read_image(path)
        mask = None if self.masks is None else read_mask(self.masks[index])
        if mask is not None and mask.shape != image.shape[:2]:
            raise CarvanaError(f"mask {self.masks[index]} is {mask.shape[::-1]}, photo is {image.shape[1::-1]}")
        extra = [read_stacked(p, image.shape[:2]) for p in self.stacked[index]] if self.stacked else []
        box = bbox_for(self.boxes, path.name, "data.bboxes") if self.boxes is not None else None
        return {"image": image, "mask": mask, "extra": extra, "box": box}

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, key)  # the sampler's (index, seed), or an index
        raw = self.read(index)
        image, mask, extra, box = raw["image"], raw["mask"], raw["extra"], raw["box"]
        item = {"name": self.images[index].name, "size": torch.tensor(image.shape[:2])}
        if box is not None:
            item["bbox"] = torch.tensor(box)
        if self.transform is not None:
            if box is not None:
                image, mask, extra = cut_box(image, box), cut_box(mask, box), [cut_box(e, box) for e in extra]
            self.transform.set_random_seed(seed)  # albumentations draws from its own state, not torch's
            # stacked channels follow the geometry (as masks, nearest) but not the colour augmentations
            out = self.transform(image=image, mask=mask, **({"masks": extra} if extra else {}))
            image, mask, extra = out["image"], out["mask"], list(out.get("masks", []))
        else:
            image, extra = self.geometry.to_input(image, extra, box)
        item["image"] = to_tensor(np.dstack([image, *extra]) if extra else image)
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).float()[None]
        return item


class AugmentSampler(DistributedSampler):
    """This rank's training photos in an order, and each with the seed of its augmentations, drawn from (seed, the
    global step when the pass starts, photo): a run resumed from an epoch's checkpoint draws what an uninterrupted run
    draws, whatever the workers. The global step, not Lightning's set_epoch: a resumed run's first loader is made
    before Lightning sets the epoch (its iterator prefetches at once), but after it restores the step."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, step: Callable[[], int]) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.step = step

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the pass's draws follow the global step (see the class)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.epoch = self.step()  # DistributedSampler shuffles with seed + epoch
        for index in super().__iter__():
            yield index, int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])


def read_stacked(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A stacked-channel probability mask (HxW probs8) of the photo's size (h, w)."""
    probs8 = read_probs8(path)
    if probs8.shape != size:
        raise CarvanaError(f"stacked mask {path} is {probs8.shape[1]}x{probs8.shape[0]}, its photo {size[1]}x{size[0]}")
    return probs8


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


def load_boxes(path: str | Path, images: list[Path]) -> dict[str, Box]:
    """The car boxes of a bboxes.csv, checked to cover every photo before a long run starts."""
    boxes = read_bboxes(path)
    missing = [p.name for p in images if p.name not in boxes]
    if missing:
        raise CarvanaError(f"bboxes.csv {path} has no row for {len(missing)} photo(s), first: {missing[0]}: rewrite "
                           f"it with python -m carvana.crops on predictions that include them")
    return boxes


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 -> CxHxW uint8 tensor."""
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


def split(root: Path, image_dir: str, folds_csv: str | Path, fold: int) -> tuple[list[Path], list[Path]]:
    """Training and validation photos of `fold` (all 16 angles of a car share a fold); bad inputs are refused."""
    images = list_images(root / image_dir)
    folds = read_folds(folds_csv)
    if fold not in set(folds.fold):
        raise CarvanaError(f"fold={fold} is not in {folds_csv}: choose one of {sorted(set(folds.fold))}")
    fold_of = dict(zip(folds.id, folds.fold))
    unknown = sorted({car_id(p) for p in images} - set(fold_of))
    if unknown:
        raise CarvanaError(f"{len(unknown)} car(s) of {root / image_dir} are not in {folds_csv} (first: {unknown[0]}): "
                           f"make the folds for this data with python -m carvana.folds")
    val = [p for p in images if fold_of[car_id(p)] == fold]
    train = [p for p in images if fold_of[car_id(p)] != fold]
    for name, photos in (("validation", val), ("training", train)):
        if not photos:
            raise CarvanaError(f"fold={fold} leaves no {name} photos in {root / image_dir} ({folds_csv}): choose "
                               "another fold, or make folds for this data with python -m carvana.folds")
    return train, val


class CarvanaDataModule(pl.LightningDataModule):
    """Train on the cars of every fold but `fold`, validate on `fold`'s cars, both from `root`."""

    def __init__(self, root: str, folds: str, fold: int, geometry: Geometry, image_dir: str = "train",
                 train_mask_dir: str = "train_masks", val_mask_dir: str = "train_masks", batch_size: int = 4,
                 num_workers: int | None = 2, augment: dict | None = None, stacked_dirs: list[str] | None = None,
                 pseudo: dict | None = None, bboxes: str | None = None, seed: int = 0):
        super().__init__()
        self.root, self.folds, self.fold, self.geometry = Path(root), folds, fold, geometry
        self.image_dir, self.train_mask_dir, self.val_mask_dir = image_dir, train_mask_dir, val_mask_dir
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment or {}
        self.stacked_dirs, self.pseudo, self.seed = list(stacked_dirs or []), pseudo or {}, seed
        self.bboxes = bboxes
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        """Every check on the inputs happens here, once (Lightning calls setup again: nothing is read twice)."""
        if self.train_set is not None:
            return
        train, val = split(self.root, self.image_dir, self.folds, self.fold)
        train_masks = find_masks(train, self.root / self.train_mask_dir)
        val_masks = find_masks(val, self.root / self.val_mask_dir)
        if self.pseudo.get("dir"):
            # test photos labelled by an earlier prediction join the training set only; validation stays real
            pseudo_images, pseudo_masks = select_pseudo(self.root / self.pseudo.get("image_dir", "test"),
                                                        self.pseudo, len(train), self.seed)
            train, train_masks = train + pseudo_images, train_masks + pseudo_masks
        check_files(train + val, train_masks + val_masks, workers=default_workers(1))
        with Image.open(val[0]) as img:
            self.image_size = [img.height, img.width]
        stacked = self.stacked_dirs and find_stacked(train + val, self.stacked_dirs)
        boxes = load_boxes(self.bboxes, train + val) if self.bboxes else None
        transform = train_transform(self.geometry, self.augment)
        self.train_set = CarvanaDataset(train, train_masks, self.geometry, transform, stacked and stacked[:len(train)],
                                        boxes)
        self.val_set = CarvanaDataset(val, val_masks, self.geometry, stacked=stacked and stacked[len(train):],
                                      boxes=boxes)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._ranks()
        sampler = AugmentSampler(self.train_set, world, rank, self.seed, step=lambda: self.trainer.global_step)
        return self._loader(self.train_set, sampler, drop_last=len(self.train_set) > self.batch_size * world)

    def val_dataloader(self) -> DataLoader:
        # each photo on one rank only: a padded sampler would score some twice (Lightning #5060) and bias the mean
        world, rank = self._ranks()
        sampler = UnrepeatedDistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False)
        return self._loader(self.val_set, sampler, drop_last=False)

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset, sampler: DistributedSampler, drop_last: bool) -> DataLoader:
        workers = self.num_workers
        if workers is None:  # data.num_workers=null: the CPUs shared by this machine's devices
            workers = default_workers(self.trainer.num_devices if self.trainer is not None else 1)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=workers,
                          pin_memory=torch.cuda.is_available(), drop_last=drop_last, persistent_workers=workers > 0)
