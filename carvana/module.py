"""SegModule: a U-Net (smp) with its preprocessing, loss, metrics and optimizer, built from plain values."""

import inspect
from pathlib import Path

import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
import torchmetrics

from carvana import CarvanaError
from carvana.losses import border_dice, build_loss
from carvana.simple_unet import SimpleUnet
from carvana.transforms import padded_size, paste_boxes, resize_like_training, restore

ARCHITECTURES = {"unet": smp.Unet, "simple_unet": SimpleUnet}
SCHEDULERS = ("cosine", "plateau", "cyclic", "none")


def check_encoder(name: str) -> None:
    """Refuse an unknown encoder name with the list of valid ones."""
    if name.startswith("tu-") and timm.is_model(name[3:]):
        return
    if name not in smp.encoders.get_encoder_names():
        raise CarvanaError(f"unknown encoder '{name}' (model.encoder_name): use encoder=resnet50 or encoder=mobilenet, "
                           f"an smp encoder ({', '.join(smp.encoders.get_encoder_names()[:8])}, ...) or tu-<timm name>")


def encoder_layers_until(encoder: torch.nn.Module, last: str | None) -> list[torch.nn.Module]:
    """The encoder's top-level layers from the first up to `last` included (model.freeze_encoder_until)."""
    if last is None:
        return []
    names = [name for name, _ in encoder.named_children()]
    if last not in names:
        raise CarvanaError(
            f"model.freeze_encoder_until={last} is not a layer of this encoder: one of {', '.join(names)}"
        )
    children = list(encoder.children())
    return children[: names.index(last) + 1]


def load_encoder_weights(encoder: torch.nn.Module, path: str) -> None:
    """Load a local weights file (state dict of the encoder's backbone) for clusters without internet."""
    if not Path(path).is_file():
        raise CarvanaError(f"model.encoder_weights={path} is neither 'imagenet', null, nor an existing weights file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CarvanaError(f"weights file {path} lacks {len(missing)} encoder tensors (first: {missing[0]})")
    encoder.load_state_dict({k: state[k] for k in own})


def dice_per_image(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Dice of each image of Bx1xHxW probabilities (or {0,1} masks) against targets -> B; two empty masks give 1."""
    dims = tuple(range(1, probs.ndim))
    inter = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return torch.where(total > 0, 2 * inter / (total + eps), torch.ones_like(total))


class SegModule(pl.LightningModule):
    """Binary segmentation of uint8 photos: preprocessing happens inside, so a checkpoint alone predicts."""

    def __init__(self, encoder_name: str = "mobilenet_v2", encoder_weights: str | None = None, arch: str = "unet",
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16), in_channels: int = 3,
                 preprocessing: dict | None = None, input_size: list[int] | None = None,
                 crop_size: list[int] | None = None, loss: dict | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.0, scheduler: str = "cosine", min_lr: float = 1e-5,
                 plateau_patience: int = 3, cyclic: dict | None = None, freeze_encoder_epochs: int = 0,
                 freeze_encoder_until: str | None = None,
                 threshold: float = 0.5, bn_recalibration_batches: int = 0, data: dict | None = None):
        super().__init__()
        # `data` (root, folds, fold, photo size) is provenance only: predict.py takes its defaults from it
        self.save_hyperparameters()
        if arch not in ARCHITECTURES:
            raise CarvanaError(f"unknown model.arch '{arch}': choose one of {', '.join(ARCHITECTURES)}")
        if arch != "simple_unet":
            check_encoder(encoder_name)
        if scheduler not in SCHEDULERS:
            raise CarvanaError(f"unknown optim.scheduler '{scheduler}': choose one of {', '.join(SCHEDULERS)}")
        local = encoder_weights not in (None, "imagenet")
        if arch == "simple_unet":  # the seed's from-scratch second stage: no encoder to pretrain
            self.net = SimpleUnet(in_channels=in_channels, classes=1)
        else:
            self.net = ARCHITECTURES[arch](
                encoder_name=encoder_name, encoder_weights=None if local else encoder_weights,
                decoder_channels=tuple(decoder_channels), in_channels=in_channels, classes=1,
            )
            if local:
                load_encoder_weights(self.net.encoder, encoder_weights)
        self.frozen_layers = encoder_layers_until(self.net.encoder, freeze_encoder_until)
        pre = preprocessing or {"name": "imagenet", "input_space": "RGB", "mean": [123.675, 116.28, 103.53],
                                "std": [58.395, 57.12, 57.375]}
        self.register_buffer("mean", torch.tensor(pre["mean"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre["std"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.bgr = pre["input_space"] == "BGR"
        self.criterion = build_loss(**(loss or {"name": "bce_dice", "bce_weight": 0.2, "dice_weight": 0.8}))
        self.val_dice, self.val_soft_dice = torchmetrics.MeanMetric(), torchmetrics.MeanMetric()
        self.val_border_dice = torchmetrics.MeanMetric()

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Bx(3+k)xHxW RGB photos (+ k stacked masks) in 0..255 -> the encoder's input (channel order, mean, std)."""
        x = image.float()
        rgb, extra = x[:, :3], x[:, 3:]
        if self.bgr:
            rgb = rgb.flip(1)
        rgb = (rgb - self.mean) / self.std
        # stacked probability masks: 0..255 -> [-1, 1]
        return torch.cat([rgb, extra / 127.5 - 1], 1) if extra.shape[1] else rgb

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW uint8 RGB photos (H, W divisible by 32) -> Bx1xHxW logits."""
        return self.net(self.normalize(image))

    def predict_full(self, image: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Bx3xHxW uint8 photos -> Bx1xHxW logits at the photos' full size `size`, whatever the model's input size.

        One path for validation and prediction: resize (as training's A.Resize) or pad to 32, run, then upsample or
        crop back. `image` is the photos at full size, or already resized to input_size by the loader
        (CarvanaDataset): then `size` says the full size (default: the image's own).
        """
        size = tuple(image.shape[-2:] if size is None else size)
        if self.hparams.input_size is not None:
            input_size = tuple(self.hparams.input_size)
            if image.shape[-2:] == input_size:
                x = image.float()
            elif image.dtype == torch.uint8:  # exactly as training's A.Resize (an ensemble of several input sizes)
                x = resize_like_training(image, input_size).float()
            else:
                x = F.interpolate(image.float(), size=input_size, mode="area")
        else:
            height, width = padded_size(*size)
            # pad at the bottom and the right with black, as the training transform does
            x = F.pad(image.float(), (0, width - size[1], 0, height - size[0]))
        return restore(self(x), size, resized=self.hparams.input_size is not None)

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Bx1xHxW logits and {0,1} masks -> the configured loss (conf/loss/, default 0.2 BCE + 0.8 Dice)."""
        return self.criterion(logits, mask)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True,
                 batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # the metric is computed at the photo's full size, as Kaggle scores it
        if "bbox" in batch:  # car crops: the model saw each box resized; paste its prediction back at full size
            logits = paste_boxes(self(batch["image"]), batch["bbox"], batch["mask"].shape[-2:], fill=-20.0)
        else:
            logits = self.predict_full(batch["image"], batch["mask"].shape[-2:])
        probs = logits.sigmoid()
        pred = (probs > self.hparams.threshold).float()
        self.val_dice.update(dice_per_image(pred, batch["mask"]))
        self.val_soft_dice.update(dice_per_image(probs, batch["mask"]))
        self.val_border_dice.update(border_dice(pred, batch["mask"]))
        n = len(batch["image"])
        self.log("val_loss", self.loss(logits, batch["mask"]), sync_dist=True, batch_size=n)
        self.log("val_dice", self.val_dice, prog_bar=True, batch_size=n)
        self.log("val_soft_dice", self.val_soft_dice, batch_size=n)
        self.log("val_border_dice", self.val_border_dice, batch_size=n)

    def on_validation_epoch_start(self) -> None:
        """Re-estimate BatchNorm statistics on a few training batches before validating (precise BN).

        Early in training from scratch the running averages trail the fast-moving weights: evaluated with them, a
        net that segments well in train mode can predict nothing at all. Cheap next to an epoch of training.
        """
        if self.hparams.bn_recalibration_batches <= 0 or self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        norms = [m for m in self.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the batches below
        self.train()
        with torch.no_grad():
            for i, batch in enumerate(self.trainer.train_dataloader):
                if i >= self.hparams.bn_recalibration_batches:
                    break
                self(batch["image"].to(self.device))
        self.eval()
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum

    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.hparams.freeze_encoder_epochs
        self.net.encoder.requires_grad_(not frozen)
        for layer in self.frozen_layers:  # model.freeze_encoder_until: frozen for the whole run
            layer.requires_grad_(False)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return {"optimizer": optimizer}
        if hp.scheduler == "cosine":
            epochs = max(1, self.trainer.max_epochs or 1)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=hp.min_lr)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        if hp.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.5, patience=hp.plateau_patience, min_lr=hp.min_lr)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_dice"}}
        cyclic = {"base_lr": hp.min_lr, "max_lr": hp.lr, "step_size_up": 2000, "mode": "triangular",
                  **(hp.cyclic or {})}
        # Adam has no momentum to cycle
        scheduler = torch.optim.lr_scheduler.CyclicLR(optimizer, **cyclic, cycle_momentum=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def load_weights(self, path: str) -> None:
        """Fine-tune from another checkpoint's weights only (model.init_from); optimizer and step start afresh."""
        ckpt = read_checkpoint(path, key="model.init_from")
        theirs = ckpt["hyper_parameters"]
        for key in ("arch", "encoder_name", "decoder_channels", "in_channels"):
            if key in theirs and list(np_flat(theirs[key])) != list(np_flat(self.hparams[key])):
                raise CarvanaError(f"model.init_from={path} has {key}={theirs[key]}, this run {self.hparams[key]}: "
                                   f"choose a checkpoint of the same network")
        self.load_state_dict(ckpt["state_dict"])


def np_flat(value: object) -> tuple:
    """A hyperparameter as a tuple, so [256, 128] and (256, 128) compare equal."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def read_checkpoint(path: str | Path, key: str = "ckpt") -> dict:
    """A checkpoint of this project (a dict with SegModule hyperparameters); anything else is a CarvanaError."""
    path = Path(path)
    if not path.is_file():
        raise CarvanaError(f"{key}={path}: no checkpoint at this path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 -- torch raises many types for a file that is not a checkpoint
        raise CarvanaError(f"{key}={path} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "encoder_name" not in ckpt.get("hyper_parameters", {}):
        raise CarvanaError(f"{key}={path} is not a checkpoint of this project (no SegModule hyperparameters)")
    return ckpt


def load_module(path: str | Path) -> SegModule:
    """Rebuild a trained SegModule from its checkpoint alone, without downloading pretrained weights."""
    ckpt = read_checkpoint(path)
    hparams = {**ckpt["hyper_parameters"], "encoder_weights": None}
    unknown = set(hparams) - set(inspect.signature(SegModule.__init__).parameters)
    if unknown:
        raise CarvanaError(f"checkpoint {path} is from another version of carvana (hyperparameters "
                           f"{', '.join(sorted(unknown))}): retrain it or load it with that version")
    module = SegModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()
