"""SegModule: the network with its preprocessing, geometry, loss, metrics and optimizer, built from plain values (the
keys of conf/config.yaml's model and optim blocks: carvana.training.run builds it, carvana.model.loading rebuilds it
from a checkpoint alone)."""

import pytorch_lightning as pl
import torch
import torchmetrics

from carvana import CarvanaError
from carvana.data.geometry import Geometry
from carvana.model.losses import border_dice, build_loss, dice_per_image
from carvana.model.network import build_network, encoder_layers_until
from carvana.model.tta import check_tta, tta_logits

SCHEDULERS = ("cosine", "plateau", "cyclic", "none")
SWITCHES = ("channels_last", "compile")  # speed only: predict.py may change them on a trained checkpoint
# what torch.compile raises when its backend cannot compile (dynamo wraps the backend's own errors in these)
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException,)


class SegModule(pl.LightningModule):
    """Binary segmentation of uint8 photos: preprocessing happens inside, so a checkpoint alone predicts."""

    def __init__(self, *, arch: str, encoder_name: str, encoder_weights: str | None, decoder_channels: list[int],
                 in_channels: int, preprocessing: dict, crop_size: list[int] | None, input_size: list[int] | None,
                 boxes: bool, loss: dict, lr: float, weight_decay: float, scheduler: str, min_lr: float,
                 plateau_patience: int, cyclic: dict, freeze_encoder_epochs: int, freeze_encoder_until: str | None,
                 threshold: float, bn_recalibration_batches: int, data: dict, channels_last: bool, compile: bool,
                 val_tta: str):
        super().__init__()
        # `preprocessing` is resolved (mean/std/channel order, network.resolve_preprocessing); `data` (root, folds,
        # fold, photo size) is provenance: predict.py takes its defaults from it
        self.save_hyperparameters()
        check_tta(val_tta, "model.val_tta")
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
        pre = preprocessing
        self.register_buffer("mean", torch.tensor(pre["mean"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre["std"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.bgr = pre["input_space"] == "BGR"
        self.criterion = build_loss(**loss)
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

    def val_probs(self, image: torch.Tensor, size: tuple[int, int], boxes: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Network inputs (as the loader makes them) -> (Bx1xHxW float32 probs at the photos' `size`, averaged over
        model.val_tta's passes as predict.py's tta averages them; the plain pass's logits, for the loss)."""
        passes = tta_logits(self, image, size, boxes, self.hparams.val_tta)
        logits = next(passes)
        probs = logits.sigmoid()
        for count, more in enumerate(passes, start=2):
            probs = probs + (more.sigmoid() - probs) / count  # a running mean: one extra full-size tensor at a time
        return probs, logits

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Kaggle's metric: each photo's Dice at its own size, averaged over photos (MeanMetric syncs the ranks)
        probs, logits = self.val_probs(batch["image"], batch["mask"].shape[-2:], batch.get("bbox"))
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
        self.train()  # frozen layers stay in eval mode (train below): their pretrained statistics are kept
        norms = [m for m in self.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the batches below
        with torch.no_grad():
            for i, batch in enumerate(self.trainer.train_dataloader):
                if i >= self.hparams.bn_recalibration_batches:
                    break
                self(batch["image"].to(self.device))
        self.eval()
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum

    def frozen(self) -> list[torch.nn.Module]:
        """The encoder's layers that do not train now: all of it for model.freeze_encoder_epochs, and the layers up to
        model.freeze_encoder_until for the whole run."""
        whole = self._trainer is not None and self.current_epoch < self.hparams.freeze_encoder_epochs
        return [self.net.encoder] if whole else self.frozen_layers

    def train(self, mode: bool = True) -> "SegModule":
        """Lightning's train mode, with the BatchNorm layers of frozen encoder layers in eval mode: a frozen
        pretrained layer keeps the statistics its weights were trained with, not those of a few photos."""
        super().train(mode)
        if mode:
            for layer in self.frozen():
                layer.eval()
        return self

    def on_train_epoch_start(self) -> None:
        self.net.encoder.requires_grad_(True)
        for layer in self.frozen():
            layer.requires_grad_(False)
        self.train()

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
        # Adam has no momentum to cycle
        scheduler = torch.optim.lr_scheduler.CyclicLR(optimizer, **hp.cyclic, cycle_momentum=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
