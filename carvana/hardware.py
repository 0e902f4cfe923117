"""The hardware a run gets: Lightning Trainer settings resolved for the machine found, DataLoader processes."""

import os

import torch

from carvana import CarvanaError


def trainer_kwargs(trainer: dict) -> dict:
    """conf/trainer as Lightning's Trainer takes it: precision=auto becomes mixed precision on a GPU (bf16 where the
    GPU has it, else 16-mixed) and 32-bit on the CPU."""
    kwargs = dict(trainer)
    if kwargs.get("precision") == "auto":
        gpu = torch.cuda.is_available() and kwargs.get("accelerator") in ("auto", "gpu", "cuda")
        kwargs["precision"] = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    return kwargs


def check_accelerator(trainer: dict) -> None:
    """trainer.accelerator=gpu (trainer=gpu, trainer=ddp) on a machine where torch sees no GPU: one line, not
    Lightning's traceback."""
    if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CarvanaError(f"trainer.accelerator={trainer['accelerator']}, but torch sees no GPU here "
                           f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'}): use "
                           "trainer=cpu, "
                           "or trainer=auto to take the GPUs when there are some")


def default_workers(devices: int) -> int:
    """DataLoader processes per device for num_workers=null: the CPUs this process may use, shared by the devices of
    this machine, at most 8 (a GPU with 2 would wait on the JPEG decoding; more than 8 rarely helps). Where each
    rank is already pinned to its own CPUs (SLURM, one task per GPU) this divides them once too often: set
    num_workers there."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus // max(1, devices)))
