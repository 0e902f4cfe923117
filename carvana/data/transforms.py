"""The training transform: the geometry's sizing step (carvana.data.geometry), then the augmentations."""

import albumentations as A
import cv2
import numpy as np

from carvana.data.geometry import Geometry


class CarColor(A.ImageOnlyTransform):
    """Recolour the car only, the studio as it is: hue anywhere on the circle, saturation x0..1.5 (0: a grey car),
    brightness x0.3..1.5 (a black or a white car). Every Carvana photo has the same studio, so a model that sees the
    car in every colour on an unchanged background learns "car versus studio" rather than the colours of its cars."""

    def __init__(self, p: float):
        super().__init__(p=p)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        return {"car": data["mask"] > 0, "hue": self.py_random.uniform(0, 180),
                "saturation": self.py_random.uniform(0, 1.5), "value": self.py_random.uniform(0.3, 1.5)}

    def apply(self, img: np.ndarray, car: np.ndarray, hue: float, saturation: float, value: float, **_) -> np.ndarray:
        levels = np.arange(256)
        luts = [((levels + round(hue)) % 180).astype(np.uint8),  # uint8 look-up tables: 3x faster than float HSV
                np.clip(levels * saturation, 0, 255).astype(np.uint8), np.clip(levels * value, 0, 255).astype(np.uint8)]
        hsv = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
        recoloured = cv2.cvtColor(cv2.merge([cv2.LUT(c, lut) for c, lut in zip(hsv, luts)]), cv2.COLOR_HSV2RGB)
        out = img.copy()
        np.copyto(out, recoloured, where=car[..., None])
        return out


def augmentations(*, hflip: float, affine: float, shift_limit: float, scale_limit: float, rotate_limit: float,
                  color: float, hue: float, gray: float, channel_shuffle: float, contrast: float, quality: float,
                  car_color: float) -> list:
    """data.augment's list: the 4th-place solution's augmentations (horizontal flip, shift/scale, mild colour), then,
    each off at 0, the appearance of cars of any colour and finish: hue over the whole circle, grayscale, channel
    shuffle, brightness/contrast/gamma, blur/noise/JPEG quality, the car alone recoloured (CarColor). The values are
    probabilities, except the limits (fractions; rotation in degrees)."""
    out = [
        A.HorizontalFlip(p=hflip),
        A.Affine(
            scale=(1 - scale_limit, 1 + scale_limit), translate_percent=(-shift_limit, shift_limit),
            rotate=(-rotate_limit, rotate_limit), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=affine,
        ),
        A.OneOf([A.HueSaturationValue(p=1), A.RandomBrightnessContrast(p=1), A.RGBShift(p=1)], p=color),
    ]
    if car_color:
        out.append(CarColor(p=car_color))
    if hue:  # OpenCV's hue runs over 0..180: a shift of up to 90 reaches every colour
        out.append(A.HueSaturationValue(hue_shift_limit=90, sat_shift_limit=40, val_shift_limit=0, p=hue))
    if gray:
        out.append(A.ToGray(p=gray))
    if channel_shuffle:
        out.append(A.ChannelShuffle(p=channel_shuffle))
    if contrast:
        out += [A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=contrast),
                A.RandomGamma(gamma_limit=(60, 160), p=contrast)]
    if quality:
        out.append(A.OneOf([A.GaussianBlur(sigma_limit=(0.3, 1.5), p=1), A.GaussNoise(std_range=(0.02, 0.08), p=1),
                            A.ImageCompression(quality_range=(30, 90), p=1)], p=quality))
    return out


def train_transform(geometry: Geometry, augment: dict) -> A.Compose:
    """Image, mask and stacked channels together: sized to the model's input first (cheaper), then augmented."""
    return A.Compose(geometry.train_sizing() + augmentations(**augment))
