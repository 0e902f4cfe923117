"""Runs inside a SLURM job step: the Trainer's nodes and devices checked against the allocation, in one line, and
torch's threads fitted to the task's CPUs. And the callback of hydra/launcher=slurm: its requirements checked before
submitting, a fold job whose run raised failed."""

import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Mapping
from typing import Any, NoReturn

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from carvana import CarvanaError
from carvana.cli import fail


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


def use_allocated_cpus() -> None:
    """In a SLURM job step given --cpus-per-task, torch's CPU threads are the task's CPUs (OMP_NUM_THREADS, when set,
    wins).

    Where SLURM does not bind tasks to their CPUs (TaskPlugin=task/none, no cgroup), torch starts one thread per CPU
    of the node, and jobs sharing a node spin on each other's cores: two 1-CPU fold jobs on a 2-CPU node took 78 s
    per tiny epoch instead of 2.4 s. Lightning's DDP reads OMP_NUM_THREADS too, so it is set as well.
    """
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if not in_slurm_step() or not cpus.isdigit() or "OMP_NUM_THREADS" in os.environ:
        return
    import torch  # here: the submitting process (SlurmSweep) need not import torch

    torch.set_num_threads(int(cpus))
    os.environ["OMP_NUM_THREADS"] = cpus


class SlurmSweep(Callback):
    """hydra/launcher=slurm's callback (conf/hydra/launcher/slurm.yaml) around hydra-submitit-launcher, unchanged.

    Before anything is submitted (on_multirun_start, in the submitting process): what submitting needs, one line
    each, instead of a traceback ending in "Unknown plugin class" or "Could not detect srun". Without accounting
    (sacct), a warning: submitit watches its jobs with sacct, and waits forever for a job that died without result.

    Inside each SLURM job (on_job_end, after the run): Hydra's run_job catches the exception a run raises and returns
    it as the job's result; the job's log then holds no traceback, SLURM and submitit see a job that succeeded, and
    the sweep re-raises the bare exception, naming neither the job nor its log. Here the traceback goes to the job's
    log and the job exits 1 (SystemExit: Hydra's callbacks swallow Exceptions), so submitit reports a failed job
    with the path of its log and the log's last lines.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            import hydra_plugins.hydra_submitit_launcher.submitit_launcher  # noqa: F401
            import submitit  # noqa: F401
        except ImportError as err:
            stop(f"hydra/launcher=slurm needs hydra-submitit-launcher ({err}): pip install -e '.[slurm]'")
        for tool in ("sbatch", "srun"):
            if shutil.which(tool) is None:
                stop(f"hydra/launcher=slurm submits with {tool}, which is not on the PATH: run it on a SLURM login "
                     "node (or start a single-node SLURM here: sudo bash scripts/slurm-up.sh)")
        try:
            sacct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=60,
                                   check=False)
            problem = "" if sacct.returncode == 0 else (sacct.stderr.strip() or "no answer").splitlines()[0]
        except (OSError, subprocess.TimeoutExpired) as err:
            problem = str(err)
        if problem:
            print(f"warning: sacct fails ({problem}): submitit watches the jobs with it, and a job that dies without "
                  "a result (killed, out of memory) would keep this command waiting", file=sys.stderr, flush=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            return
        try:
            job_return.return_value  # noqa: B018 -- raises the run's exception (Hydra prints "Error executing job" first)
        except Exception:  # noqa: BLE001 -- whatever the run raised
            traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)


def stop(message: str) -> NoReturn:
    fail(f"error: {message}")  # before Hydra's launcher starts: no job's handler is around it yet
