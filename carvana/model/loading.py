"""A trained model from its file alone: a checkpoint of train.py (weights + plain hyperparameters) or an exported
.onnx file, for predict.py, the export, fine-tuning (model.init_from) and the service."""

import inspect
import zipfile
import zlib
from pathlib import Path

import torch

from carvana import CarvanaError
from carvana.model.module import SWITCHES, SegModule
from carvana.model.onnx import OnnxModel, read_onnx_hparams

NETWORK_KEYS = ("arch", "encoder_name", "decoder_channels", "in_channels")  # what a checkpoint's weights fit


def read_checkpoint(path: str | Path, key: str = "ckpt", onnx: bool = False) -> dict:
    """A checkpoint of this project (a dict with SegModule hyperparameters); anything else is a CarvanaError. With
    `onnx`, a .onnx file of carvana.export is read too: {"hyper_parameters": ...} from its metadata, no weights."""
    path = Path(path)
    if not path.is_file():
        raise CarvanaError(f"{key}={path}: no checkpoint at this path")
    if path.suffix == ".onnx":
        if not onnx:
            raise CarvanaError(f"{key}={path} is an ONNX model: {key} takes a checkpoint of train.py (.ckpt)")
        return {"hyper_parameters": read_onnx_hparams(path, key)}
    check_crcs(path, key)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 -- torch raises many types for a file that is not a checkpoint
        raise CarvanaError(f"{key}={path} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "encoder_name" not in ckpt.get("hyper_parameters", {}):
        raise CarvanaError(f"{key}={path} is not a checkpoint of this project (no SegModule hyperparameters)")
    return ckpt


def check_crcs(path: Path, key: str = "ckpt") -> None:
    """Refuse a checkpoint whose bytes differ from the CRC-32s its zip records: torch.load checks none (with mmap or
    without), and a copy with 8 KB of one weight overwritten loads and predicts garbage. Reading the CRCs of a 124 MB
    resnet50 U-Net takes 0.08 s (its SHA-256 0.22 s, loading it 0.65 s; 2-core CPU, warm page cache)."""
    if not zipfile.is_zipfile(path):
        return  # torch's legacy pickle format has no CRCs; torch.load says whether it reads
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as err:
        raise CarvanaError(f"{key}={path} is damaged ({err}): copy it again from where it was trained") from None
    if bad is not None:
        raise CarvanaError(f"{key}={path} is damaged: {bad} does not match the CRC-32 its zip records (a corrupt "
                           "copy or disk): copy it again from where it was trained")


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
        lines = str(err).splitlines()
        raise CarvanaError(f"checkpoint {path}: its weights do not fit its own hyperparameters "
                           f"({lines[1].strip() if len(lines) > 1 else err})") from None
    return module.eval()


def load_model(path: str | Path, switches: dict | None = None) -> SegModule | OnnxModel:
    """What predict.py ensembles: a SegModule from a checkpoint, or an OnnxModel from an exported .onnx file."""
    return OnnxModel(path) if Path(path).suffix == ".onnx" else load_module(path, switches)


def load_models(paths: list[Path], switches: dict | None = None) -> list[SegModule | OnnxModel]:
    """load_model of each path; an ensemble that mixes ONNX files and checkpoints must have one geometry."""
    models = [load_model(p, switches) for p in paths]
    kinds = {isinstance(m, SegModule) for m in models}
    keys = sorted({m.geometry.key for m in models})
    if len(kinds) > 1 and len(keys) > 1:
        raise CarvanaError(f"an ensemble of ONNX files and checkpoints needs one geometry, these have "
                           f"{', '.join(keys)}: export every checkpoint, or ensemble checkpoints only")
    return models


def init_from(module: SegModule, path: str | Path) -> None:
    """Fine-tune from another checkpoint's weights only (model.init_from); optimizer and step start afresh."""
    ckpt = read_checkpoint(path, key="model.init_from")
    theirs = ckpt["hyper_parameters"]
    for key in NETWORK_KEYS:
        if key in theirs and _flat(theirs[key]) != _flat(module.hparams[key]):
            raise CarvanaError(f"model.init_from={path} has {key}={theirs[key]}, this run {module.hparams[key]}: "
                               f"choose a checkpoint of the same network")
    module.load_state_dict(ckpt["state_dict"])


def _flat(value: object) -> tuple:
    """A hyperparameter as a tuple, so [256, 128] and (256, 128) compare equal."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
