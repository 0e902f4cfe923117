"""Photos as the network sees them, with their masks: the training set (transformed, augmented from the sampler's
seeds), the validation set (the network's input at evaluation, the mask at the photo's own size), and batches of
photos of one size."""

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, Dataset, DistributedSampler

from carvana import CarvanaError
from carvana.data.boxes import Box, cut_box
from carvana.data.coco import CocoMask, read_mask_source
from carvana.data.geometry import Geometry
from carvana.data.io import probs_cut, read_image, read_probs8


class SegDataset(Dataset):
    """Photos as the network sees them, 3(+k stacked)xhxw uint8, with their {0,1} masks as 1xHxW float.

    With a transform (training) photo, mask and stacked channels are transformed together: the geometry's sizing, then
    augmentations drawn from the seed the sampler gives with the index. Without one (validation) the photo goes
    through `geometry.to_input` and the mask stays at the photo's own size, for Kaggle's metric.
    """

    def __init__(self, images: list[Path], masks: list[Path | CocoMask] | None, geometry: Geometry,
                 transform: A.Compose | None = None, stacked: list[list[Path]] | None = None,
                 boxes: dict[str, Box] | None = None, soft_masks: Iterable[Path] = ()):
        self.images, self.masks, self.geometry, self.transform = images, masks, geometry, transform
        # second stage: per photo, the probability masks other models predicted for it, as extra input channels
        self.stacked = stacked
        # car boxes (data.bboxes): the model sees each photo's box
        self.boxes = boxes
        # pseudo-labels: predicted probabilities (predict.py's PNGs) that serve as masks, cut at 0.5
        self.soft_masks = frozenset(soft_masks)

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> dict:
        """The photo (HxWx3 uint8 RGB), mask (HxW {0,1} or None), stacked channels and box of photo `index`."""
        path = self.images[index]
        image = read_image(path)
        mask = None if self.masks is None else self.read_mask(self.masks[index])
        if mask is not None and mask.shape != image.shape[:2]:
            where = getattr(self.masks[index], "source", self.masks[index])  # a file, or a COCO file's photo
            raise CarvanaError(f"mask {where} is {mask.shape[0]}x{mask.shape[1]} (height x width), photo "
                               f"{path} is {image.shape[0]}x{image.shape[1]}")
        extra = [read_stacked(p, image.shape[:2]) for p in self.stacked[index]] if self.stacked else []
        box = self.boxes[path.name] if self.boxes is not None else None
        return {"image": image, "mask": mask, "extra": extra, "box": box}

    def read_mask(self, source: Path | CocoMask) -> np.ndarray:
        """A mask (a file, or a photo's COCO objects), or a pseudo-label's probabilities cut at 0.5 -> HxW uint8
        {0,1}."""
        if isinstance(source, Path) and source in self.soft_masks:
            return (read_probs8(source) > probs_cut(0.5)).astype(np.uint8)
        return read_mask_source(source)

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
    draws, whatever the workers.

    The global step, not Lightning's set_epoch: Lightning creates a resumed run's first iterator, which fetches at
    once, before it sets the sampler's epoch (Lightning #21938, since 2.5.3; PR #21960 still open in 2.6.6), but after
    it restores the step. tests/test_framework_contracts.py fails when that changes.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, step: Callable[[], int]) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.step = step

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the pass's draws follow the global step (see the class)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        super().set_epoch(self.step())  # DistributedSampler shuffles with seed + epoch
        for index in super().__iter__():
            yield index, int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])


class SizeBatchSampler(BatchSampler):
    """This rank's share of the indices of `sampler` (every num_replicas-th from `rank`: each photo on one rank, none
    repeated to even the ranks out, so none is scored or written twice), in batches of photos of one size: a batch of
    masks or outputs at the photos' own size must share a shape. One size: the plain batches of the order.

    A BatchSampler whose arguments Lightning can re-create it from (it does so for prediction, giving it the loader's
    plain sampler): the ranks are its own arguments, not a distributed sampler Lightning would replace."""

    def __init__(self, sampler: Iterable[int], sizes: list[tuple[int, int]], batch_size: int, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if isinstance(sampler, DistributedSampler):  # Lightning re-created us over its own split: split twice
            raise CarvanaError("the photos are split by rank here, and again by a distributed sampler: build the "
                               "Trainer with use_distributed_sampler=False, as train.py and predict.py do")
        self.sampler, self.sizes, self.batch_size, self.drop_last = sampler, sizes, batch_size, drop_last
        self.num_replicas, self.rank = num_replicas, rank

    def __iter__(self) -> Iterator[list[int]]:
        open_batches: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index in list(self.sampler)[self.rank::self.num_replicas]:
            batch = open_batches[self.sizes[index]]
            batch.append(index)
            if len(batch) == self.batch_size:
                yield list(batch)
                batch.clear()
        if not self.drop_last:
            yield from (batch for batch in open_batches.values() if batch)

    def __len__(self) -> int:
        counts: dict[tuple[int, int], int] = defaultdict(int)
        for index in list(self.sampler)[self.rank::self.num_replicas]:
            counts[self.sizes[index]] += 1
        return sum(n // self.batch_size if self.drop_last else -(-n // self.batch_size) for n in counts.values())


def pad_collate(items: list[dict]) -> dict:
    """Training items whose photos differ in size (the whole photo, padded to a multiple of 32 each) -> a batch padded
    at the bottom and the right to the largest, masks padded as background, as each photo's own padding is."""
    height = max(item["image"].shape[-2] for item in items)
    width = max(item["image"].shape[-1] for item in items)
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in ("image", "mask"):
            values = [F.pad(v, (0, width - v.shape[-1], 0, height - v.shape[-2])) for v in values]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


def read_stacked(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A stacked-channel probability mask (HxW probs8) of the photo's size (h, w)."""
    probs8 = read_probs8(path)
    if probs8.shape != size:
        raise CarvanaError(f"stacked mask {path} is {probs8.shape[0]}x{probs8.shape[1]}, its photo {size[0]}x{size[1]}"
                           " (height x width)")
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


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 -> CxHxW uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
