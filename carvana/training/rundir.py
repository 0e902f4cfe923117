"""train.py's words before Hydra reads them (light imports: --help stays fast), and the run folder as the run's
record: `python train.py hydra.run.dir=<run>` starts that run again with its own settings (its .hydra/overrides.yaml,
the words given now on top) and leaves .hydra/ as it was unless the start is accepted; a new run refused before any
work leaves no folder behind."""

import os
import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from carvana.files import atomic_path

RECORD = ".hydra"  # Hydra's hydra.output_subdir: config.yaml, hydra.yaml, overrides.yaml
MADE_FOLDS = "folds.csv"  # in the run folder: the folds made by data.group when data.folds is null


def _key(word: str) -> str:
    """The key an override sets: `encoder` of encoder=resnet50, `data.generate` of ~data.generate."""
    return word.partition("=")[0].lstrip("+~")


def _run_dir(words: list[str]) -> Path | None:
    """The folder named by the last hydra.run.dir= word, quotes removed."""
    given = [w.partition("=")[2] for w in words if _key(w) == "hydra.run.dir"]
    return Path(given[-1].strip("'\"")) if given else None


def restart_words(words: list[str]) -> list[str]:
    """The command line of a start in an earlier run's folder: the run's saved overrides, then `words` (a key given
    now replaces the saved one), and hydra.output_subdir=null so that Hydra does not rewrite the record before the
    settings are checked. Other command lines, DDP ranks (Lightning gives them output_subdir=null), -m: as they are."""
    if "LOCAL_RANK" in os.environ or {"-m", "--multirun"} & set(words) or any(
            _key(w) == "hydra.output_subdir" for w in words):
        return words
    run_dir = _run_dir(words)
    saved = run_dir / RECORD / "overrides.yaml" if run_dir else None
    if saved is None or not saved.is_file():
        return words
    given = {_key(w) for w in words}
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        given.add("ckpt_path")  # the run's own last.ckpt, not the checkpoint it first started from
    kept = [str(w) for w in OmegaConf.load(saved) if _key(str(w)) not in given]
    return [*kept, *words, "hydra.output_subdir=null"]


def update_record(out_dir: Path, cfg: DictConfig) -> bool:
    """After a start in a run's folder was accepted: its .hydra/config.yaml (Hydra's composed `cfg`, interpolations
    kept, as Hydra writes it for a new run) and overrides.yaml take the words given on top of the saved ones (none
    given: the record stays byte for byte). True when they were rewritten."""
    record = out_dir / RECORD
    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is not None:
        return False  # Hydra wrote the record itself: a new run
    if not (record / "overrides.yaml").is_file():
        return False
    task = list(HydraConfig.get().overrides.task)
    if [str(w) for w in OmegaConf.load(record / "overrides.yaml")] == task:
        return False
    for name, content in (("config.yaml", cfg), ("overrides.yaml", OmegaConf.create(task))):
        with atomic_path(record / name) as tmp:
            OmegaConf.save(content, tmp)
    return True


def discard_refused_run(out_dir: Path) -> None:
    """A new run refused before any work: remove the folder Hydra made for it, when it holds nothing but Hydra's
    record and log (a folder that held anything else, or an earlier run's, stays)."""
    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is None or not out_dir.is_dir():
        return
    record = out_dir / RECORD
    made = {f"{HydraConfig.get().job.name}.log", MADE_FOLDS}  # what this start writes before its checks end
    if not record.is_dir() or any(p != record and (p.name not in made or p.stat().st_mtime < record.stat().st_mtime)
                                  for p in out_dir.iterdir()):
        return
    shutil.rmtree(record)
    for name in made:
        (out_dir / name).unlink(missing_ok=True)
    out_dir.rmdir()


def keep_folds(folds: str | None, ckpt_path: str | Path, saved_data: dict, out_dir: Path) -> None:
    """A run resumed from another folder's checkpoint with folds made by group (data.folds=null) takes that run's
    folds.csv, not folds made again from today's photos (photos it trained on could become validation photos)."""
    made = out_dir / MADE_FOLDS
    if folds or made.is_file():
        return
    for source in (Path(saved_data.get("folds") or ""), Path(ckpt_path).resolve().parent.parent / MADE_FOLDS):
        if source.is_file():
            made.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, made)
            return


def data_help(words: list[str]) -> str:
    """The data file --help lists: the one `data=` names (train.py data=folder --help: the folder's keys), Carvana's
    otherwise (also for data=synthetic, which sets keys of several blocks: its values are in --help's intro)."""
    from carvana.cli import CONF

    chosen = [w.partition("=")[2] for w in words if w.startswith("data=")]
    path = CONF / "data" / f"{chosen[-1] if chosen else 'carvana'}.yaml"
    if not path.is_file() or path.read_text().startswith("# @package _global_"):
        return "data/carvana"
    return f"data/{path.stem}"
