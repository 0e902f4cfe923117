"""Hydra's state that a training run rewrites for Lightning's DDP launcher, checked against hydra-core 1.3.8 and
pytorch-lightning 2.6.6; tests/test_framework_contracts.py fails when an upgrade changes what it relies on."""

import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict


def relaunch_job_not_sweep() -> None:
    """Make Lightning's DDP launcher re-run this job, not the whole multirun, in this job's own directory.

    Lightning starts ranks 1.. with sys.argv plus hydra.run.dir=<HydraConfig's run.dir>
    (lightning_fabric/strategies/launchers/subprocess_script.py, _hydra_subprocess_cmd): under -m that re-launches
    every job of the sweep, each in a new directory. Its multirun support (PR #11617) was reverted (PR #15737) and
    the redo (PR #18175) is still open in 2.6.6 (Hydra #2070). Give it this job's overrides and output directory.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    OmegaConf.set_readonly(hydra_cfg, False)  # HydraConfig.set_config makes it read-only
    with open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
