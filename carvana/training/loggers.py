"""The loggers of a training run, from conf/logger (logger=[csv,tensorboard,wandb,mlflow]): names become Lightning
loggers here, each writing into the run folder unless told otherwise."""

import importlib.util
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from carvana import CarvanaError

# name -> the package it needs and the extra that installs it (csv and tensorboard come with the project)
PACKAGES = {"csv": None, "tensorboard": None, "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def build_loggers(chosen: dict, out_dir: Path) -> list[Logger]:
    """Lightning loggers for the `logger` config (its keys other than `images` name them; their values are options)."""
    loggers = []
    for name, options in chosen.items():
        if name == "images":
            continue
        if name not in PACKAGES:
            raise CarvanaError(f"unknown logger '{name}': choose among {', '.join(PACKAGES)} (logger=[csv,wandb])")
        needed = PACKAGES[name]
        if needed and importlib.util.find_spec(needed[0]) is None:
            raise CarvanaError(f'logger={name} needs the {needed[0]} package: pip install -e ".[{needed[1]}]"')
        loggers.append(_make(name, dict(options or {}), out_dir))
    return loggers


def _make(name: str, options: dict, out_dir: Path) -> Logger:
    if name == "csv":
        return CSVLogger(out_dir, name="csv", version="")
    if name == "tensorboard":
        return TensorBoardLogger(out_dir, name="tensorboard", version="")
    if name == "wandb":
        return WandbLogger(save_dir=str(out_dir), project=options.get("project", "carvana"),
                           offline=options.get("mode", "offline") == "offline")
    if options.get("tracking_uri"):
        return MLFlowLogger(experiment_name=options.get("experiment_name", "carvana"),
                            tracking_uri=options["tracking_uri"])
    # a local store in the run folder, no server: MLflow's SQLite store (its file store is refused since MLflow 3.x)
    local = (out_dir / "mlflow").resolve()
    local.mkdir(parents=True, exist_ok=True)
    return MLFlowLogger(experiment_name=options.get("experiment_name", "carvana"),
                        tracking_uri=f"sqlite:///{local / 'mlflow.db'}",
                        artifact_location=(local / "artifacts").as_uri())


def finish_loggers(loggers: list[Logger]) -> None:
    """End a wandb run now, not at exit: its closing lines ("Find logs at ...") come before train.py's last line.
    (WandbLogger never finishes its run; wandb.finish() ends the one it started, and does nothing where none was.)"""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb  # only with logger=wandb: the wandb extra

        wandb.finish()
