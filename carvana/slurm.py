"""Runs inside a SLURM job step: the Trainer's nodes and devices checked against the allocation, in one line."""

import os
from collections.abc import Mapping

from carvana import CarvanaError


def in_slurm_step() -> bool:
    """Whether Lightning will take its ranks from SLURM (SLURMEnvironment.detect(), without its srun warning)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def check_allocation(trainer: Mapping) -> None:
    """Stop with one line when trainer.num_nodes / trainer.devices do not match this SLURM job step.

    Lightning runs one SLURM task per device and reads the ranks from SLURM's variables; a mismatch is a ValueError
    with a traceback in Lightning, and `srun --ntasks=N` a RuntimeError.
    """
    if not in_slurm_step():
        return
    env = os.environ
    ntasks, per_node = int(env["SLURM_NTASKS"]), env.get("SLURM_NTASKS_PER_NODE")
    if ntasks > 1 and per_node is None:
        raise CarvanaError(f"SLURM started {ntasks} tasks with --ntasks, which Lightning refuses: give the tasks per "
                           f"node instead (srun -N 1 --ntasks-per-node={ntasks} ...)")
    nodes, num_nodes = int(env.get("SLURM_NNODES", "1")), int(trainer.get("num_nodes") or 1)
    if num_nodes != nodes:
        raise CarvanaError(f"trainer.num_nodes={num_nodes}, but this SLURM job step has {nodes} node(s) "
                           f"(SLURM_NNODES={nodes}): set trainer.num_nodes={nodes}, or ask srun/sbatch for "
                           f"--nodes={num_nodes}")
    devices = trainer.get("devices")
    if per_node is not None and isinstance(devices, int) and devices > 0 and devices != int(per_node):
        raise CarvanaError(f"trainer.devices={devices}, but SLURM starts {per_node} task(s) per node "
                           f"(--ntasks-per-node={per_node}) and Lightning runs one task per device: set "
                           f"trainer.devices={per_node}, or srun/sbatch --ntasks-per-node={devices}")
