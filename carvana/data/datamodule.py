"""The training data of one fold: photos and masks found, every input checked before the first step, the folds (read,
or made by group), and the loaders of each rank."""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from carvana import CarvanaError
from carvana.data.boxes import load_boxes
from carvana.data.coco import CocoSet, read_coco
from carvana.data.dataset import AugmentSampler, SegDataset, SizeBatchSampler, find_stacked, pad_collate
from carvana.data.geometry import Geometry
from carvana.data.kfold import Folds, group_folds, read_folds, split
from carvana.data.layout import find_masks, first_process, group_pattern, list_images
from carvana.data.photo_check import check_photos
from carvana.data.pseudo import select_pseudo
from carvana.data.transforms import train_transform
from carvana.files import atomic_path
from carvana.hardware import default_workers
from carvana.progress import progress


class SegDataModule(pl.LightningDataModule):
    """Train on the photos of every fold but `fold`, validate on `fold`'s, both from `root`; see conf/data/*.yaml for
    what each argument means. `made_folds` is where folds made by group (folds=None) are written."""

    def __init__(self, *, root: str | Path, image_dir: str, train_mask_dir: str, val_mask_dir: str,
                 folds: str | None, fold: int, group: str | None, n_folds: int, geometry: Geometry, batch_size: int,
                 num_workers: int | None, augment: dict, stacked_dirs: list[str], pseudo: dict, bboxes: str | None,
                 seed: int, made_folds: Path | None, annotations: str | None, categories: list | None):
        super().__init__()
        self.root, self.image_dir = Path(root), image_dir
        self.train_mask_dir, self.val_mask_dir = train_mask_dir, val_mask_dir
        self.folds, self.fold, self.group, self.n_folds = folds, fold, group, n_folds
        self.geometry, self.batch_size, self.num_workers, self.augment = geometry, batch_size, num_workers, augment
        self.stacked_dirs, self.pseudo, self.bboxes, self.seed = list(stacked_dirs), pseudo, bboxes, seed
        self.made_folds = made_folds
        # data=coco: the photos a COCO file lists (under root/image_dir), masks drawn from its objects, not mask files
        self.annotations, self.categories = annotations, categories
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        """Every check on the inputs happens here, once (Lightning calls setup again: nothing is read twice)."""
        if self.train_set is not None:
            return
        coco = read_coco(self.annotations, self.root, self.categories, self.image_dir) if self.annotations else None
        images = coco.images if coco else list_images(self.root / self.image_dir, "data.root and data.image_dir")
        folds = self.read_or_make_folds(images)
        if self.folds == str(self.made_folds):
            images = self.listed(images, folds)
        train, val = split(images, folds, self.fold, group_pattern(self.group))
        train_masks, val_masks = self.find_masks(train, val, coco)
        files = None if coco else train_masks + val_masks  # COCO masks: sizes and objects checked by read_coco
        checked = list(progress(check_photos(train + val, default_workers(1), files), "checking the photos and masks",
                                len(train) + len(val)))
        if coco and not any(m.segmentations for m in train_masks + val_masks):
            raise CarvanaError(f"none of the {len(checked)} photos of {self.annotations} has an object (of "
                               "data.categories): check data.annotations and data.categories")
        if not coco and not any(c.car for c in checked):
            raise CarvanaError(f"none of the {len(checked)} masks (e.g. {train_masks[0]}) holds any object: check "
                               "data.train_mask_dir and the masks (white or 1 = object, black or 0 = background)")
        self.val_sizes = [c.size for c in checked[len(train):]]
        self.image_size = list(self.val_sizes[0])  # provenance: a validation photo's (height, width)
        soft = []
        if self.pseudo["dir"]:
            # test photos labelled by an earlier prediction join the training set only; validation stays real
            pseudo_images, soft = select_pseudo(self.root / self.pseudo["image_dir"], self.pseudo, len(train),
                                                self.seed)
            list(check_photos(pseudo_images, default_workers(1)))
            train, train_masks = train + pseudo_images, train_masks + soft
        stacked = self.stacked_dirs and find_stacked(train + val, self.stacked_dirs)
        boxes = load_boxes(self.bboxes, train + val) if self.bboxes else None
        transform = train_transform(self.geometry, self.augment)
        self.train_set = SegDataset(train, train_masks, self.geometry, transform, stacked and stacked[:len(train)],
                                    boxes, soft_masks=soft)
        self.val_set = SegDataset(val, val_masks, self.geometry, stacked=stacked and stacked[len(train):],
                                  boxes=boxes)

    def find_masks(self, train: list[Path], val: list[Path], coco: CocoSet | None) -> tuple[list, list]:
        """The masks of the training and validation photos: files in the mask folders, or a COCO file's objects."""
        if coco:
            return coco.masks_of(train), coco.masks_of(val)
        return (find_masks(train, self.root / self.train_mask_dir, "data.train_mask_dir"),
                find_masks(val, self.root / self.val_mask_dir, "data.val_mask_dir"))

    def read_or_make_folds(self, images: list[Path]) -> Folds:
        """data.folds read, or, when it is null, folds made by group (data.group, data.n_folds, seed) and written to
        the run folder (`made_folds`), where predict.py finds them."""
        if self.folds:
            return read_folds(self.folds)
        if self.made_folds is not None and self.made_folds.is_file():  # a run started again keeps the folds it made
            self.folds = str(self.made_folds)
            return read_folds(self.made_folds)
        table = group_folds(images, group_pattern(self.group), self.n_folds, self.seed)
        if self.made_folds is None:
            raise CarvanaError("data.folds=null makes folds by group, but this run has no folder to write them to")
        self.made_folds.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.made_folds) as tmp:
            table.to_csv(tmp, index=False)
        self.folds = str(self.made_folds)
        return read_folds(self.made_folds)

    def listed(self, images: list[Path], folds: Folds) -> list[Path]:
        """The photos the run's own folds list; photos added to data.root since the run began are left out, said
        once on stderr (a resumed run that took them would move photos it trained on into validation)."""
        pattern = group_pattern(self.group)
        added = [p for p in images if folds.key(p, pattern) not in folds.fold_of]
        if added and first_process():
            print(f"warning: {len(added)} photo(s) in {self.root / self.image_dir} are not in this run's folds "
                  f"{self.made_folds} (first: {added[0].name}): left out, as when the run began; a new run folder "
                  "(hydra.run.dir=...) trains on them", file=sys.stderr, flush=True)
        return [p for p in images if folds.key(p, pattern) in folds.fold_of]

    def train_dataloader(self) -> DataLoader:
        world, rank = self._ranks()
        sampler = AugmentSampler(self.train_set, world, rank, self.seed, step=lambda: self.trainer.global_step)
        drop_last = len(self.train_set) > self.batch_size * world
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
                          collate_fn=pad_collate, **self._workers())

    def val_dataloader(self) -> DataLoader:
        # each photo on one rank only: a padded sampler would score some twice (Lightning #5060) and bias the mean;
        # a batch holds photos of one size, their masks stay at that size
        world, rank = self._ranks()
        batches = SizeBatchSampler(range(len(self.val_set)), self.val_sizes, self.batch_size, num_replicas=world,
                                   rank=rank)
        return DataLoader(self.val_set, batch_sampler=batches, **self._workers())

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _workers(self) -> dict:
        workers = self.num_workers
        if workers is None:  # data.num_workers=null: the CPUs shared by this machine's devices
            workers = default_workers(self.trainer.num_devices if self.trainer is not None else 1)
        return {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0}
