"""Training throughput: Lightning's loop against a plain PyTorch loop, and the data pipeline against JPEG decoding.

    .venv/bin/python -m bench.train_throughput [--encoder mobilenet_v2] [--batch-size 4] [--steps 20] [--size 256 384]

(-m from the repository root finds the carvana package with or without `pip install -e .`)

1. images/s of pl.Trainer.fit on SegModule against a plain loop (SegModule's forward and loss, the same Adam,
   zero_grad/backward/step): same initial weights, same batches, same threads, same steps, the first WARMUP steps
   untimed. Both read the same pre-loaded, pre-collated in-memory batches, so the loops are compared, not the
   loading. The two alternate (plain, Lightning, plain, ...); the best round of each gives the ratio.
2. images/s of one data-loading worker (in-process) on 1918x1280 photos: SegDataset.__getitem__ (JPEG decode,
   GIF mask, the train transform with its augmentations) against carvana.data.io.read_image alone on the same files.

The last line is `lightning_vs_plain=<ratio> loader_vs_decode=<ratio>` (the loader in the default crop mode).

3. Switches: --channels-last and --compile add Lightning runs with model.channels_last / model.compile,
   alternating with the default Lightning run (same weights, batches, steps; a compilation falls in the untimed
   warm-up steps); `channels_last_vs_default=` and `compile_vs_default=` compare the best rounds' images/s.
   --only-switches skips 1. and 2.; --accelerator gpu and --precision 16-mixed|bf16-mixed run them on a GPU
   (bench/gpu_check.py does).
"""

import argparse
import itertools
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from carvana.data.dataset import SegDataset
from carvana.data.geometry import Geometry
from carvana.data.io import read_image, read_mask
from carvana.data.layout import find_masks, list_images
from carvana.data.transforms import train_transform
from carvana.model.module import SegModule

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"  # 16 Kaggle photos: real JPEG content decodes at the real speed
WARMUP = 2  # untimed steps: the first ones allocate buffers and pick kernels
LOSS_TOLERANCE = 1e-3  # the loops run the same computation; a larger gap means the comparison is unfair
UNSTABLE = 1.15  # rounds of one loop this far apart mean the machine was busy
PIPELINE_PASSES = 3  # passes over the photos per pipeline variant; the best counts


def find_photos(tmp: Path) -> tuple[list[Path], list[Path], str]:
    """The 1918x1280 photos and masks to use: the real ones when present, else one generated synthetic car."""
    source = "real"
    directory = REAL
    if not (REAL / "train").is_dir():
        from carvana.synthetic import make_dataset

        directory = make_dataset(tmp / "synthetic", train_cars=1, test_cars=0, size=(1280, 1918), seed=0)
        source = "synthetic"
    images = list_images(directory / "train")
    return images, find_masks(images, directory / "train_masks"), source


class Batches(Dataset):
    """Already-collated batches held in memory; a DataLoader with batch_size=None hands them out as they are."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        return self.batches[index]


def configured(encoder: str, size: list[int]) -> dict:
    """SegModule's arguments from conf/ (train.py's defaults) with this bench's encoder and input size, no download."""
    from hydra import compose, initialize_config_dir

    from carvana.training.run import module_kwargs, settings_of

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model.encoder_name={encoder}", "model.encoder_weights=null",
                                                       "data.crop_size=null", f"data.input_size=[{size[0]},{size[1]}]"])
    return module_kwargs(settings_of(cfg), {})


def preload(images: list[Path], masks: list[Path], size: list[int], batch_size: int, steps: int) -> DataLoader:
    """`steps` batches of Bx3xHxW uint8 photos and Bx1xHxW masks resized to `size`, decoded once, cycling the photos."""
    augment = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "carvana.yaml").augment)
    no_augment = {key: 0 for key in augment}
    geometry = Geometry(input_size=size)
    dataset = SegDataset(images, masks, geometry, transform=train_transform(geometry, no_augment))
    items = [dataset[i] for i in range(len(dataset))]
    batches = []
    for step in range(steps):
        chosen = [items[(step * batch_size + j) % len(items)] for j in range(batch_size)]
        batches.append({key: torch.stack([item[key] for item in chosen]) for key in ("image", "mask")})
    # one epoch of exactly `steps` batches: no epoch end (scheduler step, epoch logging) inside the timed span
    return DataLoader(Batches(batches), batch_size=None, shuffle=False, num_workers=0)


def plain_run(module: SegModule, loader: DataLoader) -> tuple[list[float], list[float]]:
    """Time stamps (start of each step from WARMUP on, end of the last) of a plain loop, and every step's loss."""
    optimizer = torch.optim.Adam(module.parameters(), lr=module.hparams.lr, weight_decay=module.hparams.weight_decay)
    module.train()
    stamps, losses = [], []
    for step, batch in enumerate(loader):
        if step >= WARMUP:
            stamps.append(time.perf_counter())
        optimizer.zero_grad()
        loss = module.criterion(module(batch["image"]), batch["mask"])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    stamps.append(time.perf_counter())
    return stamps, [float(x) for x in losses]


class StepTimer(pl.Callback):
    """The same time stamps as plain_run, from Lightning's hooks; also every loss, the threads and the mode."""

    def __init__(self, steps: int):
        self.steps, self.stamps, self.losses, self.threads, self.training = steps, [], [], None, None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        if batch_idx >= WARMUP:
            self.stamps.append(time.perf_counter())

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: dict, batch: dict, batch_idx: int
    ) -> None:
        if batch_idx == self.steps - 1:
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the GPU's queue is done, not only launched
            self.stamps.append(time.perf_counter())
            self.threads, self.training = torch.get_num_threads(), pl_module.training
        self.losses.append(outputs["loss"])


def lightning_run(module: SegModule, loader: DataLoader, steps: int, threads: int, accelerator: str = "cpu",
                  precision: str = "32-true") -> tuple[list[float], list[float]]:
    """Time stamps as plain_run's of pl.Trainer.fit (no logger, checkpoints, bar or validation), and every loss."""
    timer = StepTimer(steps)
    trainer = pl.Trainer(
        accelerator=accelerator,
        precision=precision,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == steps and len(timer.stamps) == steps - WARMUP + 1, (trainer.global_step, steps)
    assert timer.threads == threads and timer.training, f"Lightning ran with {timer.threads} threads, {timer.training=}"
    return timer.stamps, [float(x) for x in timer.losses]


def compare_loops(args: argparse.Namespace, loader: DataLoader) -> dict:
    """Time stamps of every round of each loop (alternating, fresh model from the same weights each time)."""
    kwargs = configured(args.encoder, args.size)
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in SegModule(**kwargs).state_dict().items()}
    stamps, losses = {"plain": [], "Lightning": []}, {}
    for _ in range(args.rounds):
        for name, runs in stamps.items():
            module = SegModule(**kwargs)
            module.load_state_dict(init)
            if name == "plain":
                run, losses[name] = plain_run(module, loader)
            else:
                run, losses[name] = lightning_run(module, loader, args.steps, args.threads)
            runs.append(run)
    gap = max(abs(a - b) for a, b in zip(losses["plain"], losses["Lightning"]))
    if gap > LOSS_TOLERANCE:
        raise SystemExit(f"the loops diverge (loss gap {gap:.2e} > {LOSS_TOLERANCE}): they do not run the same steps")
    return {"stamps": stamps, "gap": gap, "losses": losses["plain"]}


def switch_rates(args: argparse.Namespace, loader: DataLoader) -> dict[str, list[float]]:
    """Images/s of each round of Lightning's fit: the default, then each switch asked for (fresh model, same
    weights)."""
    kwargs = configured(args.encoder, args.size)
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in SegModule(**kwargs).state_dict().items()}
    variants = {"default": {}, "channels_last": {"channels_last": True}, "compile": {"compile": True}}
    variants = {name: v for name, v in variants.items() if name == "default" or getattr(args, name)}
    rates = {name: [] for name in variants}
    timed = (args.steps - WARMUP) * args.batch_size
    for _ in range(args.rounds):
        for name, switch in variants.items():
            module = SegModule(**{**kwargs, **switch})
            module.load_state_dict(init)
            start = time.perf_counter()
            stamps, _ = lightning_run(module, loader, args.steps, args.threads, args.accelerator, args.precision)
            rates[name].append(timed / (stamps[-1] - stamps[0]))
            print(f"  {name:<14} {rates[name][-1]:7.2f} images/s ({time.perf_counter() - start:.1f} s with its "
                  "warm-up)", flush=True)
    return rates


def pipeline_rates(images: list[Path], masks: list[Path]) -> dict[str, float]:
    """Images/s of one in-process worker for each pipeline variant, best of PIPELINE_PASSES passes over the photos."""
    data = OmegaConf.load(ROOT / "conf" / "data" / "carvana.yaml")
    crop, augment = list(data.crop_size), OmegaConf.to_container(data.augment)
    resize = list(OmegaConf.load(ROOT / "conf" / "data" / "synthetic.yaml").data.input_size)
    variants = {  # the first is the reference, the third gives loader_vs_decode
        "JPEG decode only: carvana.data.io.read_image": lambda i: read_image(images[i]),
        "GIF mask only: carvana.data.io.read_mask": lambda i: read_mask(masks[i]),
        f"SegDataset, crop {crop[0]}x{crop[1]} + augment (default)": SegDataset(
            images, masks, Geometry(crop_size=crop), transform=train_transform(Geometry(crop_size=crop), augment)
        ).__getitem__,
        f"SegDataset, resize {resize[0]}x{resize[1]} (height x width) + augment": SegDataset(
            images, masks, Geometry(input_size=resize), transform=train_transform(Geometry(input_size=resize), augment)
        ).__getitem__,
        "SegDataset, no transform (validation)": SegDataset(images, masks, Geometry()).__getitem__,
    }
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(PIPELINE_PASSES):
        for name, load in variants.items():  # interleaved, so a burst of load elsewhere hits every variant alike
            start = time.perf_counter()
            for i in range(len(images)):
                load(i)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(images) / seconds for name, seconds in best.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="mobilenet_v2")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help=f"steps per run, the first {WARMUP} untimed")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 384], metavar=("H", "W"),
                        help="model input in the loop comparison, both divisible by 32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/Lightning rounds; the best counts")
    parser.add_argument("--channels-last", action="store_true", help="also time Lightning with model.channels_last")
    parser.add_argument("--compile", action="store_true", help="also time Lightning with model.compile")
    parser.add_argument("--only-switches", action="store_true", help="only the switches' comparison (3.)")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"], help="of the switches' comparison")
    parser.add_argument("--precision", default="32-true", help="of the switches' comparison: 16-mixed, bf16-mixed")
    args = parser.parse_args()
    if args.steps <= WARMUP:
        parser.error(f"--steps must exceed the {WARMUP} warm-up steps")
    if (args.accelerator != "cpu" or args.precision != "32-true") and not args.only_switches:
        parser.error("--accelerator and --precision are for the switches' comparison: add --only-switches")
    return args


def quieten() -> None:
    """Lightning's notes that this benchmark's set-up makes on purpose."""
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # "GPU available: ..." and the like
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # in-memory batches need no workers
    warnings.filterwarnings("ignore", ".*`validation_step` but have no `val_dataloader`.*")  # no validation, on purpose
    warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning's pytree helper against torch 2.14, harmless here


def report_switches(args: argparse.Namespace, loader: DataLoader) -> None:
    """3.: time Lightning with and without each switch; print the best rates' ratios."""
    print(f"switches: unet/{args.encoder}, batch {args.batch_size}, input {args.size[0]}x{args.size[1]} (height x "
          f"width), {args.accelerator}, precision {args.precision}, {args.steps} steps ({WARMUP} untimed), "
          f"{args.rounds} alternating rounds", flush=True)
    rates = switch_rates(args, loader)
    best = {name: max(values) for name, values in rates.items()}
    print(f"lightning_images_per_s={best['default']:.2f}")
    for name in [n for n in best if n != "default"]:
        print(f"{name}_vs_default={best[name] / best['default']:.3f}")


def report_loops(args: argparse.Namespace, loops: dict) -> tuple[dict[str, float], float]:
    """1.: print each loop's best and median-step rates -> (best images/s per loop, the largest spread of rounds)."""
    timed = (args.steps - WARMUP) * args.batch_size
    print(f"training loop: unet/{args.encoder}, batch {args.batch_size}, input {args.size[0]}x{args.size[1]} (height "
          f"x width), {args.threads} torch threads, {args.steps} steps ({WARMUP} untimed), {args.rounds} alternating "
          "rounds")
    print("  both loops read the same pre-loaded in-memory batches (decoded once): the loops are compared, not loading")
    best, median, spread = {}, {}, 1.0
    for name, runs in loops["stamps"].items():
        rounds = [timed / (run[-1] - run[0]) for run in runs]
        # the median step, start to start, shrugs off bursts of load from other processes: a cross-check
        median[name] = args.batch_size / statistics.median(b - a for run in runs for a, b in itertools.pairwise(run))
        best[name] = max(rounds)
        print(f"  {name:<10} best {best[name]:7.2f} images/s   median step {median[name]:7.2f} images/s   "
              f"(rounds: {', '.join(f'{r:.2f}' for r in rounds)})")
        spread = max(spread, max(rounds) / min(rounds))
    print(f"  loss step 1 -> {args.steps}: {loops['losses'][0]:.4f} -> {loops['losses'][-1]:.4f}, "
          f"largest plain/Lightning gap {loops['gap']:.1e}; median-step ratio "
          f"{median['Lightning'] / median['plain']:.3f}")
    return best, spread


def report(args: argparse.Namespace, loops: dict, rates: dict[str, float], images: list[Path], source: str) -> None:
    """1. and 2.: the loops, the data pipeline, a note when the machine was busy, the last line of ratios."""
    print(f"data: {len(images)} {source} photos 1280x1918 (height x width) ({images[0].parent})")
    best, spread = report_loops(args, loops)
    print(f"data pipeline, one worker (num_workers=0, in-process, cv2 1 thread), best of {PIPELINE_PASSES} passes:")
    for name, rate in rates.items():
        print(f"  {name:<68} {rate:7.2f} images/s")
    if spread > UNSTABLE:
        fix = "; or pass --threads 1: two threads on two busy cores stall each other" if args.threads > 1 else ""
        print(f"note: rounds of one loop differ {spread:.2f}x: other processes compete for the cores and the ratio "
              f"is partly noise: rerun on an idle machine{fix}")
    names = list(rates)
    print(f"lightning_vs_plain={best['Lightning'] / best['plain']:.3f} "
          f"loader_vs_decode={rates[names[2]] / rates[names[0]]:.3f}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    quieten()
    with tempfile.TemporaryDirectory() as tmp:
        images, masks, source = find_photos(Path(tmp))
        loader = preload(images, masks, list(args.size), args.batch_size, args.steps)
        if args.channels_last or args.compile or args.only_switches:
            report_switches(args, loader)
        if args.only_switches:
            return
        loops = compare_loops(args, loader)
        rates = pipeline_rates(images, masks)
    report(args, loops, rates, images, source)


if __name__ == "__main__":
    main()
