"""Lightning DDP inside a Hydra job: the ranks a job starts re-run that job, in its own folder, not the whole sweep;
and a job leaves no process group behind for the next job of a multirun."""

import contextlib
import os
import sys
from collections.abc import Iterator

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict


def relaunch_job_not_sweep() -> None:
    """Make Lightning's DDP launcher re-run this job, not the whole multirun, in this job's own directory.

    Lightning starts ranks 1.. with sys.argv plus hydra.run.dir=<run.dir>: under -m that re-launches every job of
    the sweep, each in a new directory. Give it this job's overrides and output directory instead.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    OmegaConf.set_readonly(hydra_cfg, False)
    with open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


@contextlib.contextmanager
def ddp_job_scope() -> Iterator[None]:
    """Leave no process group and no DDP variables behind, so the next job of a multirun launches its own ranks.

    Lightning's launcher sets LOCAL_RANK, WORLD_SIZE, ... in this process; left there, the next job would take
    them for an external launcher's and start no ranks.
    """
    keys = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
    before = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
