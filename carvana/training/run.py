"""train.py's job: one fold from the plain settings of the composed Hydra config (conf/config.yaml, turned into a dict
once, by settings_of): settings checked, data checked, the model and its data built from plain values, Lightning's
Trainer run, the best checkpoint reported. Hydra's own objects (the run folder, its record, the DDP relaunch) are used
at the edge only: main, rundir.update_record, compat.hydra."""

import copy
import inspect
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue
from pytorch_lightning.utilities.exceptions import SIGTERMException

from carvana import CarvanaError
from carvana.cli import check_at_least, check_threshold, expected_errors
from carvana.data.datamodule import SegDataModule
from carvana.data.geometry import Geometry
from carvana.data.kfold import write_folds
from carvana.data.transforms import augmentations
from carvana.files import remove_dead_temporaries
from carvana.hardware import check_accelerator, trainer_kwargs
from carvana.model.loading import init_from, read_checkpoint
from carvana.model.module import SegModule
from carvana.model.network import resolve_preprocessing
from carvana.progress import quiet_lightning
from carvana.slurm import check_allocation, use_allocated_cpus
from carvana.training.callbacks import callbacks
from carvana.training.compat.hydra import relaunch_job_not_sweep
from carvana.training.compat.lightning import ddp_job_scope
from carvana.training.loggers import build_loggers, finish_loggers
from carvana.training.messages import say_cpu, say_photos
from carvana.training.resume import AtomicCheckpointIO, SaveOnSigterm, Stopped, check_resumed_settings
from carvana.training.rundir import MADE_FOLDS, discard_refused_run, keep_folds, update_record

KAGGLE = "kaggle competitions download -c carvana-image-masking-challenge"


def settings_of(cfg: DictConfig) -> dict:
    """Hydra's composed config -> the plain, resolved settings the job takes (the one conversion); a key an
    experiment requires (???) left without a value is a CarvanaError naming it as the command line does."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as err:
        key = err.full_key or str(err).splitlines()[0]  # 'data.annotations', as the command line names it
        raise CarvanaError(f"{key} has no value (???): give {key}=... on the command line") from None


def check_data(data: dict, seed: int) -> None:
    """The synthetic set (data=synthetic) is generated when missing; real data that is not there gets the one-line
    hint of where it goes and how to get it. Nothing is written into a folder the user named that is not empty."""
    root = Path(data["root"])
    if "generate" in data:
        from carvana.synthetic import is_complete, make_dataset  # the renderer only when the demo asks for it

        if not is_complete(root):
            gen = data["generate"]
            print(f"generating the synthetic Carvana set in {root} ...", flush=True)
            make_dataset(root, gen["train_cars"], gen["test_cars"], (gen["height"], gen["width"]), gen["seed"])
        if data["folds"] and not Path(data["folds"]).exists():
            # a few cars: any stratification class would hold fewer cars than folds
            write_folds(root / "metadata.csv", data["folds"], data["n_folds"], seed, stratify=None)
        return
    if not (root / data["image_dir"]).is_dir():
        raise CarvanaError(f"no photos in {root / data['image_dir']} (data.root, data.image_dir): for Kaggle's Carvana "
                           f"data run `{KAGGLE}` and unzip train.zip, train_masks.zip, test.zip and the csvs into "
                           f"{root}; for your own photos use data=folder data.root=DIR (DIR/images, DIR/masks); or run "
                           "the demo: python train.py data=synthetic (or make demo)")


def check_settings(cfg: dict) -> None:
    """Values refused when the config is read, before any data is touched."""
    check_threshold(cfg["model"]["threshold"], "model.threshold")
    known = inspect.signature(augmentations).parameters
    unknown = sorted(set(cfg["data"]["augment"]) - set(known))
    if unknown:
        raise CarvanaError(f"unknown data.augment key {unknown[0]}: choose among {', '.join(known)}")
    optim = cfg["optim"]
    if optim["ema_decay"] is not None and not 0 < optim["ema_decay"] < 1:
        raise CarvanaError(f"optim.ema_decay={optim['ema_decay']} must lie between 0 and 1 (e.g. 0.99), or null")
    check_at_least(cfg, {"data.batch_size": 1, "data.num_workers": 0, "checkpoint.every_minutes": 1e-3,
                         "trainer.max_epochs": 1, "data.n_folds": 2},
                   nullable=("data.num_workers",))  # null: the CPUs shared by the devices
    for key in ("lr", "min_lr"):  # 0 is allowed: the weights stay as they are (BatchNorm statistics still move)
        value = optim[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise CarvanaError(f"optim.{key}={value} must be a learning rate >= 0 (e.g. 1e-3)")
    if optim["weight_decay"] < 0:
        raise CarvanaError(f"optim.weight_decay={optim['weight_decay']} must be >= 0")
    check_accelerator(cfg["trainer"])


def geometry_of(data: dict) -> Geometry:
    """The input mode of the data settings (carvana.data.geometry): made once per run, passed to what needs it."""
    return Geometry(data["crop_size"], data["input_size"], boxes=data["bboxes"] is not None)


def module_kwargs(cfg: dict, data: dict, geometry: Geometry | None = None) -> dict:
    """SegModule's keyword arguments from the settings: plain values only (copies, not the settings' own lists), so
    its checkpoint rebuilds it without them; `data` is the provenance the checkpoint keeps (predict.py's defaults);
    `geometry` the run's (default: the settings')."""
    m, optim = cfg["model"], cfg["optim"]
    geometry = geometry or geometry_of(cfg["data"])
    return copy.deepcopy({
        "arch": m["arch"], "encoder_name": m["encoder_name"], "encoder_weights": m["encoder_weights"],
        "decoder_channels": list(m["decoder_channels"]), "in_channels": 3 + len(cfg["data"]["stacked_dirs"] or []),
        "preprocessing": resolve_preprocessing(cfg["preprocessing"], m["encoder_name"], m["encoder_weights"]),
        "crop_size": _list(geometry.crop_size), "input_size": _list(geometry.input_size), "boxes": geometry.boxes,
        "loss": cfg["loss"], "lr": optim["lr"], "weight_decay": optim["weight_decay"],
        "scheduler": optim["scheduler"], "min_lr": optim["min_lr"], "plateau_patience": optim["plateau_patience"],
        "cyclic": optim["cyclic"], "freeze_encoder_epochs": m["freeze_encoder_epochs"],
        "freeze_encoder_until": m["freeze_encoder_until"], "threshold": m["threshold"],
        "bn_recalibration_batches": m["bn_recalibration_batches"], "channels_last": m["channels_last"],
        "compile": m["compile"], "val_tta": m["val_tta"], "data": data,
    })


def build_module(cfg: dict, data: dict, geometry: Geometry | None = None) -> SegModule:
    """The SegModule of the settings (module_kwargs), fine-tuned from model.init_from's weights when it names one."""
    module = SegModule(**module_kwargs(cfg, data, geometry))
    if cfg["model"]["init_from"]:
        init_from(module, cfg["model"]["init_from"])
    return module


def build_datamodule(cfg: dict, out_dir: Path, geometry: Geometry | None = None) -> SegDataModule:
    """The fold's data (the settings' `data` block read here, and only here), every input checked now, before the
    Trainer starts other processes; `geometry` the run's (default: the settings')."""
    d = cfg["data"]
    dm = SegDataModule(
        root=d["root"], image_dir=d["image_dir"], train_mask_dir=d["train_mask_dir"], val_mask_dir=d["val_mask_dir"],
        folds=d["folds"], fold=cfg["fold"], group=d["group"], n_folds=d["n_folds"],
        geometry=geometry or geometry_of(d), batch_size=d["batch_size"], num_workers=d["num_workers"],
        augment=dict(d["augment"]), stacked_dirs=list(d["stacked_dirs"] or []), bboxes=d["bboxes"],
        pseudo={"dir": d["pseudo_dir"], "image_dir": d["pseudo_image_dir"], "ratio": d["pseudo_ratio"],
                "min_confidence": d["pseudo_min_confidence"]},
        seed=cfg["seed"], made_folds=out_dir / MADE_FOLDS, **coco_settings(d),
    )
    dm.setup()
    return dm


def coco_settings(data: dict) -> dict:
    """data=coco's annotations file and category filter (None for mask folders)."""
    categories = data.get("categories")
    if isinstance(categories, (str, int)):  # data.categories=car: one category
        categories = [categories]
    elif categories is not None:
        categories = list(categories)
    return {"annotations": data.get("annotations"), "categories": categories}


def provenance(dm: SegDataModule) -> dict:
    """Where the model's data came from, as the datamodule read it, kept in its checkpoint: predict.py's defaults
    (predict_on_val, input_dir)."""
    return {"root": str(dm.root), "folds": str(dm.folds), "fold": dm.fold, "image_dir": dm.image_dir,
            "val_mask_dir": dm.val_mask_dir, "group": dm.group, "image_size": dm.image_size,
            "stacked_dirs": [str(s) for s in dm.stacked_dirs], "bboxes": None if dm.bboxes is None else str(dm.bboxes),
            "annotations": dm.annotations, "categories": dm.categories}


def resumed_checkpoint(cfg: dict, out_dir: Path, last: Path, geometry: Geometry) -> str | None:
    """The checkpoint this start resumes: ckpt_path, or the run folder's last.ckpt (a requeued cluster job, a run
    started again by hand), checked now (a missing or foreign file, other settings: one line); its folds kept."""
    ckpt_path = cfg["ckpt_path"] or (str(last) if last.is_file() else None)
    if ckpt_path:
        saved = read_checkpoint(ckpt_path, key="ckpt_path")["hyper_parameters"]
        check_resumed_settings(ckpt_path, saved, module_kwargs(cfg, {}, geometry))
        keep_folds(cfg["data"]["folds"], ckpt_path, saved.get("data") or {}, out_dir)
    return ckpt_path


def prepare(cfg: dict, out_dir: Path) -> tuple[SegModule, SegDataModule, str | None]:
    """Settings, allocation and data checked, seeds set; the fold's data, the model (its provenance from that data),
    and the checkpoint this start resumes (None: a new run)."""
    check_settings(cfg)
    check_allocation(cfg["trainer"])
    use_allocated_cpus()
    check_data(cfg["data"], cfg["seed"])
    say_cpu(cfg)
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    remove_dead_temporaries(out_dir / "checkpoints")
    geometry = geometry_of(cfg["data"])
    ckpt_path = resumed_checkpoint(cfg, out_dir, out_dir / "checkpoints" / "last.ckpt", geometry)
    dm = build_datamodule(cfg, out_dir, geometry)
    module = build_module(cfg, provenance(dm), geometry)
    say_photos(cfg["fold"], dm.train_set.images, dm.val_set.images, cfg["data"]["group"])
    return module, dm, ckpt_path


def train(cfg: dict, out_dir: str | Path, record: DictConfig | None = None) -> tuple[float, str, bool]:
    """Train one fold of the plain settings `cfg` (settings_of); return (best val_dice, best checkpoint path, whether
    this process is rank 0). `record`: Hydra's composed config, for the run folder's record of a restart there
    (train.py; None from Python)."""
    out_dir = Path(out_dir)
    module, dm, ckpt_path = prepare(cfg, out_dir)
    relaunch_job_not_sweep()
    loggers = build_loggers(cfg["logger"], out_dir)
    sigterm = SaveOnSigterm(out_dir / "checkpoints" / "last.ckpt")
    trainer = pl.Trainer(**trainer_kwargs(cfg["trainer"]), logger=loggers,
                         callbacks=[*callbacks(cfg, out_dir, loggers), sigterm], plugins=[AtomicCheckpointIO()],
                         default_root_dir=out_dir, use_distributed_sampler=False)
    if trainer.is_global_zero and record is not None and update_record(out_dir, record):
        print(f"{out_dir / '.hydra'}: the settings given now are recorded", flush=True)
    if ckpt_path and trainer.is_global_zero:
        print(f"resuming from {ckpt_path}", flush=True)
    with ddp_job_scope():
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        except (SIGTERMException, Exception):  # DataLoader workers killed by the same SIGTERM raise their own error
            if not trainer.received_sigterm:
                raise
            raise sigterm.stopped(trainer, out_dir) from None
    finish_loggers(loggers)
    checkpoint = trainer.checkpoint_callback
    score = checkpoint.best_model_score
    return (float(score) if score is not None else float("nan")), checkpoint.best_model_path, trainer.is_global_zero


def main(cfg: DictConfig) -> float:
    """train.py: Hydra's config made plain once, trained; rank 0 prints `val_dice=... checkpoint=...`. Expected
    errors: one line, exit 2, the folder of a new run refused before any work removed; SIGTERM: where the run
    stopped, exit 143."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    quiet_lightning()
    with expected_errors(refused=lambda: discard_refused_run(out_dir), stopped=(Stopped,), stop_line="error: {}"):
        val_dice, ckpt, rank_zero = train(settings_of(cfg), out_dir, record=cfg)
    if rank_zero:
        print(f"val_dice={val_dice:.4f} checkpoint={ckpt}", flush=True)
    return val_dice


def _list(value: object) -> list | None:
    return None if value is None else list(value)
