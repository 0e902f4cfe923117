"""Pseudo-labels: test photos labelled by an earlier prediction (PNG probabilities), for the training set only."""

from pathlib import Path

import numpy as np

from carvana import CarvanaError
from carvana.data.io import read_probs8
from carvana.data.layout import list_images
from carvana.progress import progress

# a pixel is confident when its probability is this far from 0.5 (below 0.1 or above 0.9)
CONFIDENT_MARGIN = 0.4


def confidence(probs: np.ndarray) -> float:
    """The share of pixels of an HxW uint8 probability mask far from 0.5 -> 0..1."""
    return float(np.mean(np.abs(probs.astype(np.float32) / 255 - 0.5) >= CONFIDENT_MARGIN))


def select_pseudo(image_dir: Path, pseudo: dict, n_train: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Photos of `image_dir` with a mask `<stem>.png` in pseudo['dir'], confident enough, as many as ratio asks.

    ratio is the share of pseudo-labelled photos in the resulting training set; min_confidence drops photos whose
    share of confident pixels is lower. The masks serve as labels thresholded at 0.5 (carvana.data.dataset).
    """
    mask_dir, ratio = Path(pseudo["dir"]), float(pseudo["ratio"])
    if not mask_dir.is_dir():
        raise CarvanaError(f"data.pseudo_dir={mask_dir} does not exist: predict the test photos with predict.py first")
    if not 0 < ratio < 1:
        raise CarvanaError(f"data.pseudo_ratio={ratio} must be between 0 and 1 (the share of pseudo-labelled photos)")
    # the photos of image_dir that the prediction covers (a prediction folder may hold other photos' masks too)
    images = [p for p in list_images(image_dir, "data.pseudo_image_dir") if (mask_dir / f"{p.stem}.png").exists()]
    if not images:
        raise CarvanaError(f"data.pseudo_dir={mask_dir} holds no <photo>.png mask of the photos in {image_dir}: "
                           f"predict them with predict.py, or set data.pseudo_image_dir")
    masks = [mask_dir / f"{p.stem}.png" for p in images]
    min_confidence = float(pseudo["min_confidence"])
    if min_confidence > 0:
        scored = progress(list(enumerate(masks)), "selecting the pseudo-labels", len(masks))
        keep = [i for i, m in scored if confidence(read_probs8(m)) >= min_confidence]
        images, masks = [images[i] for i in keep], [masks[i] for i in keep]
    wanted = min(len(images), round(ratio / (1 - ratio) * n_train))
    chosen = sorted(np.random.default_rng(seed).choice(len(images), size=wanted, replace=False))
    return [images[i] for i in chosen], [masks[i] for i in chosen]
