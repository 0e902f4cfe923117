"""SegModule: the network with its preprocessing, geometry, loss, metrics and optimizer, built from plain values."""

import inspect
from pathlib import Path

import pytorch_lightning as pl
import torch
import torchmetrics

from carvana import CarvanaError
from carvana.geometry import Geometry
from carvana.losses import border_dice, build_loss
from carvana.network import IMAGENET, build_network, encoder_layers_until

SCHEDULERS = ("cosine", "plateau", "cyclic", "none")
SWITCHES = ("channels_last", "compile")  # speed only: predict.py may change them on a trained checkpoint
# what torch.compile raises when its backend cannot compile (dynamo wraps the backend's own errors in these)
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException,)


def dice_per_image(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Dice of each image of Bx1xHxW probs (or {0,1} preds) against targets -> B float32; two empty masks give 1.

    The sums are float32 whatever the input: a float16 sum over a 1280x1918 mask overflows (smp #463).
    """
    probs, target = probs.float(), target.float()
    dims = tuple(range(1, probs.ndim))
    inter = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return torch.where(total > 0, 2 * inter / (total + eps), torch.ones_like(total))


class SegModule(pl.LightningModule):
    """Binary segmentation of uint8 photos: preprocessing happens inside, so a checkpoint alone predicts."""

    def __init__(self, arch: str = "unet", encoder_name: str = "mobilenet_v2", encoder_weights: str | None = None,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16), in_channels: int = 3,
                 preprocessing: dict | None = None, crop_size: list[int] | None = None,
                 input_size: list[int] | None = None, boxes: bool = False, loss: dict | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.0, scheduler: str = "cosine", min_lr: float = 1e-5,
                 plateau_patience: int = 3, cyclic: dict | None = None, freeze_encoder_epochs: int = 0,
                 freeze_encoder_until: str | None = None, threshold: float = 0.5, bn_recalibration_batches: int = 0,
                 data: dict | None = None, channels_last: bool = False, compile: bool = False, val_tta: str = "none"):
        super().__init__()
        # `preprocessing` is resolved (mean/std/channel order, network.resolve_preprocessing); `data` (root, folds,
        # fold, photo size) is provenance: predict.py takes its defaults from it
        self.save_hyperparameters()
        if val_tta not in ("none", "hflip"):
            raise CarvanaError(f"unknown model.val_tta={val_tta}: choose none or hflip")
        if scheduler not in SCHEDULERS:
            raise CarvanaError(f"unknown optim.scheduler '{scheduler}': choose one of {', '.join(SCHEDULERS)}")
        self.geometry = Geometry(crop_size, input_size, boxes)
        self.net = build_network(arch, encoder_name, encoder_weights, decoder_channels, in_channels)
        self.frozen_layers = encoder_layers_until(self.net.encoder, freeze_encoder_until)
        # speed switches (model.channels_last, model.compile): the weights and their names stay as they are, so a
        # checkpoint loads with the switches on or off
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.compile_checked = not compile  # torch.compile is lazy: a missing backend fails at the first forward
        if compile:
            self.net.compile()
        pre = preprocessing or IMAGENET
        self.register_buffer("mean", torch.tensor(pre["mean"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre["std"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.bgr = pre["input_space"] == "BGR"
        self.criterion = build_loss(**(loss or {"name": "bce_dice", "bce_weight": 0.2, "dice_weight": 0.8}))
        self.train_loss = torchmetrics.MeanMetric()
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
        """Bx3xhxw uint8 RGB network inputs (geometry.to_input; h, w divisible by 32) -> Bx1xhxw logits."""
        x = self.normalize(image).contiguous(memory_format=self.memory_format)
        if self.compile_checked:
            return self.net(x)
        try:
            logits = self.net(x)
        except COMPILE_ERRORS as err:
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise CarvanaError(f"model.compile=true: torch.compile failed at the first forward ({type(err).__name__}: "
                               f"{reason}): install its backend's compiler (inductor: a C++ compiler on the CPU, "
                               "triton on a GPU) or set model.compile=false") from None
        self.compile_checked = True
        return logits

    def full_logits(self, image: torch.Tensor, size: tuple[int, int], boxes: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Network inputs (as the loader makes them) -> Bx1xHxW logits at the photos' full `size` (H, W)."""
        return self.geometry.to_full(self(image), size, boxes)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # the loss on float32 logits: under bf16-mixed/16-mixed autocast smp's Dice sums would be bf16 on the CPU
        # (measured) and can overflow in float16 over a 1280x1920 mask (smp #463)
        loss = self.criterion(self(batch["image"]).float(), batch["mask"])
        self.log("train_loss_step", loss, prog_bar=True, batch_size=len(batch["image"]))
        self.train_loss.update(loss.detach())
        return loss

    def log_train_loss(self) -> None:
        """The epoch's mean training loss, logged with the validation metrics, before the epoch's checkpoint: a run
        resumed from that checkpoint has every row an uninterrupted run has (Lightning logs its own epoch means after
        the checkpoint)."""
        if self.train_loss.update_count:
            self.log("train_loss_epoch", self.train_loss.compute())  # MeanMetric.compute syncs the ranks
            self.train_loss.reset()

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log_train_loss()

    def on_train_epoch_end(self) -> None:
        self.log_train_loss()  # an epoch without validation

    def val_logits(self, image: torch.Tensor, size: tuple[int, int], boxes: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """Float32 logits at the photos' full `size` for validation; with model.val_tta=hflip those of the mean
        probability with the flipped photo, as predict.py tta=hflip makes them."""
        logits = self.full_logits(image, size, boxes).float()  # float32 under autocast: see training_step
        if self.hparams.val_tta == "hflip":
            flipped = self.geometry.to_full(self(image.flip(-1)).flip(-1), size, boxes).float()
            logits = torch.logit((logits.sigmoid() + flipped.sigmoid()) / 2, eps=1e-6)
        return logits

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Kaggle's metric: each photo's Dice at its full size, averaged over photos (MeanMetric syncs the ranks)
        logits = self.val_logits(batch["image"], batch["mask"].shape[-2:], batch.get("bbox"))
        probs = logits.sigmoid()
        pred = (probs > self.hparams.threshold).float()
        self.val_dice.update(dice_per_image(pred, batch["mask"]))
        self.val_soft_dice.update(dice_per_image(probs, batch["mask"]))
        self.val_border_dice.update(border_dice(pred, batch["mask"]))
        n = len(batch["image"])
        self.log("val_loss", self.criterion(logits, batch["mask"]), sync_dist=True, batch_size=n)
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
            if key in theirs and _flat(theirs[key]) != _flat(self.hparams[key]):
                raise CarvanaError(f"model.init_from={path} has {key}={theirs[key]}, this run {self.hparams[key]}: "
                                   f"choose a checkpoint of the same network")
        self.load_state_dict(ckpt["state_dict"])


def _flat(value: object) -> tuple:
    """A hyperparameter as a tuple, so [256, 128] and (256, 128) compare equal."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def read_checkpoint(path: str | Path, key: str = "ckpt", onnx: bool = False) -> dict:
    """A checkpoint of this project (a dict with SegModule hyperparameters); anything else is a CarvanaError. With
    `onnx`, a .onnx file of carvana.export is read too: {"hyper_parameters": ...} from its metadata, no weights."""
    path = Path(path)
    if not path.is_file():
        raise CarvanaError(f"{key}={path}: no checkpoint at this path")
    if path.suffix == ".onnx":
        if not onnx:
            raise CarvanaError(f"{key}={path} is an ONNX model: {key} takes a checkpoint of train.py (.ckpt)")
        from carvana.export import read_onnx_hparams  # onnx only when an ONNX file is given

        return {"hyper_parameters": read_onnx_hparams(path, key)}
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 -- torch raises many types for a file that is not a checkpoint
        raise CarvanaError(f"{key}={path} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "encoder_name" not in ckpt.get("hyper_parameters", {}):
        raise CarvanaError(f"{key}={path} is not a checkpoint of this project (no SegModule hyperparameters)")
    return ckpt


def load_module(path: str | Path, switches: dict | None = None) -> SegModule:
    """Rebuild a trained SegModule from its checkpoint alone, without downloading pretrained weights; `switches`
    (channels_last, compile: a value, or None for the checkpoint's) override the speed switches it was trained with."""
    ckpt = read_checkpoint(path)
    hparams = {**ckpt["hyper_parameters"], "encoder_weights": None}
    hparams.update({k: v for k, v in (switches or {}).items() if k in SWITCHES and v is not None})
    unknown = set(hparams) - set(inspect.signature(SegModule.__init__).parameters)
    if unknown:
        raise CarvanaError(f"checkpoint {path} is from another version of carvana (hyperparameters "
                           f"{', '.join(sorted(unknown))}): retrain it or load it with that version")
    module = SegModule(**hparams)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:  # weights of another shape than the hyperparameters build: not a 73-line dump
        raise CarvanaError(f"checkpoint {path}: its weights do not fit its own hyperparameters "
                           f"({str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err})"
                           ) from None
    return module.eval()


def load_model(path: str | Path, switches: dict | None = None) -> "SegModule | OnnxModel":  # noqa: F821
    """What predict.py ensembles: a SegModule from a checkpoint, or an OnnxModel (carvana.export) from a .onnx file,
    which predicts like one (`geometry`, `hparams`, uint8 inputs -> logits) with onnxruntime."""
    if Path(path).suffix == ".onnx":
        from carvana.export import OnnxModel

        return OnnxModel(path)
    return load_module(path, switches)


def load_models(paths: list[Path], switches: dict | None = None) -> list:
    """load_model of each path; an ensemble that mixes ONNX files and checkpoints must have one geometry."""
    models = [load_model(p, switches) for p in paths]
    kinds = {isinstance(m, SegModule) for m in models}
    keys = sorted({m.geometry.key for m in models})
    if len(kinds) > 1 and len(keys) > 1:
        raise CarvanaError(f"an ensemble of ONNX files and checkpoints needs one geometry, these have "
                           f"{', '.join(keys)}: export every checkpoint, or ensemble checkpoints only")
    return models
