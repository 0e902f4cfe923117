"""The training transform: the geometry's sizing step (carvana.geometry), then the augmentations (albumentations)."""

import albumentations as A
import cv2

from carvana.geometry import Geometry


def augmentations(hflip: float = 0.5, affine: float = 0.5, shift_limit: float = 0.0625, scale_limit: float = 0.1,
                  color: float = 0.5) -> list:
    """The seed's augmentations: horizontal flip, shift/scale, and colour (hue, saturation, brightness)."""
    return [
        A.HorizontalFlip(p=hflip),
        A.Affine(
            scale=(1 - scale_limit, 1 + scale_limit), translate_percent=(-shift_limit, shift_limit),
            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=affine,
        ),
        A.OneOf([A.HueSaturationValue(p=1), A.RandomBrightnessContrast(p=1), A.RGBShift(p=1)], p=color),
    ]


def train_transform(geometry: Geometry, augment: dict) -> A.Compose:
    """Image, mask and stacked channels together: sized to the model's input first (cheaper), then augmented."""
    return A.Compose(geometry.train_sizing() + augmentations(**augment))
