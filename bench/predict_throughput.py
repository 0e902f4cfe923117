"""Prediction throughput: predict.py's whole pipeline against the model's forward pass alone, on 1918x1280 photos.

    .venv/bin/python bench/predict_throughput.py [--photos 64] [--batch-size 4] [--num-workers N] [--writer-threads 4]
                                                 [--ckpt PATH]

1. e2e: photos/s of carvana.predict.run.run(...) (what predict.py runs: DataLoader workers reading the JPEGs,
   the Lightning predict loop, resize to the network's input and back to 1918x1280, the PNG writer in threads), from
   the call to its return, timed on N photos and on N/4 photos. A run pays once for its start (checkpoint load,
   Trainer, worker start, filling and draining the pipeline): 0.7 s, 5% of a 64-photo run and 0.003% of a run over
   Kaggle's 100,064 photos. The difference of the two runs cancels it exactly: (N - N/4) photos / (t(N) - t(N/4)) is the
   throughput of a long run, and `e2e_vs_forward` compares that with the forward. The whole-call ratio of the
   N-photo run (`whole_call_vs_forward`) is printed too.
2. forward: photos/s of Ensemble.probs on the same photos already in memory as the loader gives them (decoded and
   resized to the network's input by PredictDataset, batched, on the device), up to the full-size probabilities; the
   same checkpoint, batch size and torch threads: the most the pipeline could reach.
They are run once untimed first (warm-up), then timed in rounds of the three, one after the other, ROUNDS times. Each
round gives its own ratio from its own three times, and the median of those ratios is the result: this machine's
speed drifts by 10-30% over minutes (other tenants), and a ratio of times taken seconds apart drifts less than one of
the best times of different rounds.
3. JPEG decoding and PNG writing alone (one thread), as a share of the forward time: on a CPU device the data
   workers and writer threads take this from the model's cores; on a GPU they only need to keep up.
4. check_share: the photo check predict.py runs before any work (every photo decoded at 1/8 scale, its size read)
   as a share of the e2e time, which includes it.
5. rle_share: the time write=rle's work takes (threshold, rle_encode, the shard row) over the masks the e2e run
   wrote, as a share of the e2e time,
   i.e. what write=rle adds to the pipeline when its threads cannot hide it.

The model is by default a mobilenet_v2 U-Net at input_size 320x480 (the synthetic demo's) with random weights: the
forward's speed does not depend on them, but their noisy masks make the PNG writer's work ~1.5x a trained model's
(--ckpt). On a GPU that model may well outrun the JPEG decoding (unmeasured): measure the model users predict with,
e.g. `--encoder resnet50 --input-size full --precision 16-mixed --batch-size 8` (full: 1918x1280 padded to 1920).
Photos: the real Kaggle photos in ../shared/data/real/test, cycled up to N; a generated synthetic car when they are
absent. The last line is `e2e_vs_forward=<ratio>`.
6. Switches, each against the same model without it, on the same batches and cores, forward only
   (Ensemble.probs as in 2.), each round a pair of runs (the switch first every other round), the median of the
   per-round ratios (photos/s with / without):
   --channels-last -> `channels_last_vs_default=`, --compile -> `compile_vs_default=` (its compilation untimed, in
   the warm-up), --runtime onnx -> `onnx_vs_torch=` (the model exported by carvana.export, its parity printed, run by
   onnxruntime). --compare-only skips 1.-5.
"""

import argparse
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from carvana.cli import compose as compose_tool
from carvana.data.io import read_image, read_probs8, write_probs8
from carvana.data.layout import list_images
from carvana.data.photo_check import check_photos
from carvana.data.rle import rle_decode, rle_encode
from carvana.hardware import default_workers
from carvana.model.loading import load_module
from carvana.model.module import SegModule
from carvana.predict.ensemble import Ensemble, PredictDataset
from carvana.predict.run import run
from carvana.predict.shards import format_row

ROOT = Path(__file__).resolve().parents[1]
REAL_TEST = ROOT.parent / "shared" / "data" / "real" / "test"
INPUT_SIZE = "320x480"  # the synthetic demo's network input: conf/data/synthetic.yaml
SIZE = (1280, 1918)  # Kaggle's photos, (height, width)
ROUNDS = 5  # timed rounds of (long e2e, short e2e, forward); the median of the rounds' ratios counts


def find_photos(tmp: Path, count: int) -> tuple[list[Path], str]:
    """`count` 1918x1280 photos under tmp/photos with distinct names: the real test photos cycled, else synthetic."""
    source, directory = "real", REAL_TEST
    if not directory.is_dir():
        from carvana.synthetic import make_dataset

        directory = make_dataset(tmp / "synthetic", train_cars=1, test_cars=1, size=(1280, 1918), seed=0) / "test"
        source = "synthetic"
    originals = list_images(directory, "photos")
    (tmp / "photos").mkdir()
    photos = []
    for i in range(count):
        photo = tmp / "photos" / f"bench{i // 16:04d}_{i % 16 + 1:02d}.jpg"
        shutil.copyfile(originals[i % len(originals)], photo)
        photos.append(photo)
    return photos, f"{source} ({len(originals)} distinct)"


def make_checkpoint(path: Path, encoder: str, input_size: list[int] | None) -> Path:
    """A checkpoint in the format train.py writes (state_dict + plain hyper_parameters), random weights."""
    from hydra import compose, initialize_config_dir

    from carvana.training.run import module_kwargs, settings_of

    size = "null" if input_size is None else f"[{input_size[0]},{input_size[1]}]"
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model.encoder_name={encoder}", "model.encoder_weights=null",
                                                       "data.crop_size=null", f"data.input_size={size}"])
    torch.manual_seed(0)  # the same masks, hence the same RLE work, in every run
    module = SegModule(**module_kwargs(settings_of(cfg), {"image_size": [1280, 1918]}))
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


def time_e2e(photos: list[Path], ckpt: Path, out: Path, args: argparse.Namespace, trainer: dict) -> float:
    """Seconds of one predict() call over the photos into an empty folder."""
    shutil.rmtree(out, ignore_errors=True)
    folder = out.with_name(f"{out.name}-photos")  # predict.py takes a folder: these photos, linked
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    write = f"write=[{args.write}]" if "," in args.write else f"write={args.write}"
    cfg = compose_tool("predict", [f"ckpt={ckpt}", f"input_dir={folder}", f"output_dir={out}", "tta=none", write,
                                   f"batch_size={args.batch_size}",
                                   f"num_workers={'null' if args.num_workers is None else args.num_workers}",
                                   f"writer_threads={args.writer_threads}"])
    cfg["trainer"].update(trainer)
    start = time.perf_counter()
    line = run(cfg)
    seconds = time.perf_counter() - start
    assert line.startswith(f"predicted={len(photos)} "), line
    return seconds


def time_forward(ensemble: Ensemble, batches: list[dict], device: torch.device, autocast) -> float:
    """Seconds of Ensemble.probs over batches already in memory, as Lightning's predict loop runs it."""
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        for batch in batches:
            ensemble.probs(batch, SIZE)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def written_masks(out: Path, photos: list[Path]) -> list[np.ndarray]:
    """The HxW uint8 masks the run wrote: its PNGs, else its shard's rows decoded (0/255)."""
    if (out / f"{photos[0].stem}.png").exists():
        return [read_probs8(out / f"{p.stem}.png") for p in photos]
    rows = dict(line.split(",", 1) for line in (out / "rle-rank0.csv").read_text().splitlines()[1:])
    return [rle_decode(rows[p.name], SIZE) * np.uint8(255) for p in photos]


def side_seconds(out: Path, photos: list[Path], masks: list[np.ndarray]) -> tuple[float, float]:
    """Seconds of the CPU work around the model, one thread: JPEG decoding of the photos, PNG writing of the masks."""
    start = time.perf_counter()
    for photo in photos:
        read_image(photo)
    decode = time.perf_counter() - start
    start = time.perf_counter()
    for i, mask in enumerate(masks):
        write_probs8(out / f"again{i}.png", mask)
    return decode, time.perf_counter() - start


def check_seconds(photos: list[Path]) -> float:
    """The photo check predict.py runs before its work (carvana.data.photo_check, as predict.run calls it)."""
    start = time.perf_counter()
    list(check_photos(photos, default_workers(1)))
    return time.perf_counter() - start


def rle_seconds(photos: list[Path], masks: list[np.ndarray]) -> tuple[float, float]:
    """(seconds of write=rle's work over the masks: threshold, rle_encode, the row; mean runs/mask)."""
    start = time.perf_counter()
    rows = [format_row(p.name, rle_encode(mask > 127)) for p, mask in zip(photos, masks)]
    seconds = time.perf_counter() - start
    return seconds, float(np.mean([row.count(b" ") / 2 for row in rows]))


def compare_switches(args: argparse.Namespace, ckpt: Path, tmp: Path, photos: list[Path], batches: list[dict],
                     device: torch.device, autocast) -> dict[str, float]:
    """The median over ROUNDS of (photos/s with a switch) / (photos/s without) of the forward: {label: ratio}."""
    variants = {}
    if args.channels_last:
        variants["channels_last_vs_default"] = load_module(ckpt, {"channels_last": True})
    if args.compile:
        variants["compile_vs_default"] = load_module(ckpt, {"compile": True})
    if args.runtime == "onnx":
        from carvana.export.exporter import export
        from carvana.model.onnx import OnnxModel

        figures = export(ckpt, tmp / "bench.onnx", photos[0])
        print(f"onnx: exported, parity on {figures['photo'].name}: max_prob_diff={figures['max_prob_diff']:.2e} "
              f"mask_diff_share={figures['mask_diff_share']:.2e}", flush=True)
        variants["onnx_vs_torch"] = OnnxModel(tmp / "bench.onnx")
    default = Ensemble([load_module(ckpt, {"channels_last": False, "compile": False})], "none").to(device).eval()
    ensembles = {label: Ensemble([model], "none").to(device).eval() for label, model in variants.items()}
    for label, ensemble in ensembles.items():  # warm-up: compilation, onnxruntime's session
        start = time.perf_counter()
        time_forward(ensemble, batches[:1], device, autocast)
        print(f"{label}: warm-up (untimed) {time.perf_counter() - start:.1f} s", flush=True)
    time_forward(default, batches[:1], device, autocast)
    ratios = {label: [] for label in ensembles}
    for round_ in range(ROUNDS):
        for label, ensemble in ensembles.items():
            # a pair of runs seconds apart, the switch first every other round: neither side always runs first
            pair = (ensemble, default) if round_ % 2 else (default, ensemble)
            seconds = [time_forward(e, batches, device, autocast) for e in pair]
            base, switched = seconds if round_ % 2 == 0 else seconds[::-1]
            ratios[label].append(base / switched)
    for label, values in ratios.items():
        print(f"{label} of each round: {', '.join(f'{r:.3f}' for r in values)} (forward photos/s, with / without)")
    return {label: sorted(values)[ROUNDS // 2] for label, values in ratios.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=64, help="photos of the long run (the short one has a quarter)")
    parser.add_argument("--ckpt", type=Path, default=None,
                        help="a trained checkpoint at input 320x480 (default: random weights, whose noisy masks cost "
                        "the PNG writer more than a trained model's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader processes reading the JPEGs (default: predict.py's)")
    parser.add_argument("--writer-threads", type=int, default=4, help="threads compressing PNGs (and RLE)")
    parser.add_argument("--write", default="png", help="png, rle or png,rle (predict.py's write=)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--encoder", default="mobilenet_v2", help="smp encoder of the random-weight model")
    parser.add_argument("--input-size", default=INPUT_SIZE,
                        help="HxW network input of the random-weight model, or full (the photo padded to 1920, no "
                        "resize)")
    parser.add_argument("--precision", default="32", choices=["32", "16-mixed"], help="as trainer.precision")
    parser.add_argument("--channels-last", action="store_true", help="also time the forward with model.channels_last")
    parser.add_argument("--compile", action="store_true", help="also time the forward with model.compile")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                        help="onnx: also time the exported model under onnxruntime (onnx_vs_torch)")
    parser.add_argument("--compare-only", action="store_true", help="only the switches' comparison (5.)")
    args = parser.parse_args()
    if args.photos < 2 * args.batch_size:
        parser.error(f"--photos must be at least 2 batches ({2 * args.batch_size}): the short run has a quarter")
    return args


@dataclass
class Setup:
    """What every timing shares: the photos, the checkpoint, its model as an ensemble, the batches in memory."""

    photos: list[Path]
    source: str
    ckpt: Path
    model: SegModule
    ensemble: Ensemble
    batches: list[dict]
    device: torch.device
    autocast: torch.autocast
    trainer: dict


def set_up(tmp: Path, args: argparse.Namespace) -> Setup:
    """The photos under tmp, the checkpoint (random weights unless --ckpt), the loader's batches on the device."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    trainer = {"accelerator": "gpu" if cuda else "cpu", "devices": 1, "precision": args.precision,
               "enable_progress_bar": False, "enable_model_summary": False}
    photos, source = find_photos(tmp, args.photos)
    input_size = None if args.input_size == "full" else [int(side) for side in args.input_size.split("x")]
    ckpt = args.ckpt or make_checkpoint(tmp / "bench.ckpt", args.encoder, input_size)
    model = load_module(ckpt)
    ensemble = Ensemble([model], "none").to(device).eval()
    key = model.geometry.key
    dataset = PredictDataset(photos, [model.geometry])
    images = torch.stack([dataset[i]["inputs"][key] for i in range(len(photos))]).to(device)
    batches = [{key: chunk} for chunk in images.split(args.batch_size)]
    autocast = torch.autocast(device.type, dtype=torch.float16 if cuda else torch.bfloat16,
                              enabled=args.precision == "16-mixed")  # what Lightning's 16-mixed runs under
    return Setup(photos, source, ckpt, model, ensemble, batches, device, autocast, trainer)


def describe(setup: Setup, args: argparse.Namespace) -> None:
    """The first line: photos, device, threads, batch, workers, the model and the machine's load."""
    workers = default_workers(1) if args.num_workers is None else args.num_workers
    input_size = setup.model.hparams.input_size
    print(f"{len(setup.photos)} photos {SIZE[0]}x{SIZE[1]} (height x width, {setup.source}), device {setup.device}, "
          f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, workers {workers}, writer threads "
          f"{args.writer_threads}, write={args.write}, {setup.model.hparams.encoder_name} U-Net at "
          f"{'x'.join(map(str, input_size)) + ' (height x width)' if input_size else 'full size'}, precision "
          f"{args.precision} ({args.ckpt or 'random weights'}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)


@dataclass
class Timings:
    """Seconds of each round (e2e over n and m photos, forward, photo check) and of the work around the model."""

    n: int
    m: int
    e2e: list[float]
    e2e_short: list[float]
    forward: list[float]
    checks: list[float]
    rle_s: float
    runs: float
    decode_s: float
    png_s: float


def measure(setup: Setup, tmp: Path, args: argparse.Namespace) -> Timings:
    """1.-5.: a warm-up, then ROUNDS rounds of (long e2e, short e2e, forward), the photo check, the side work."""
    photos, ckpt, trainer = setup.photos, setup.ckpt, setup.trainer
    forward_args = (setup.ensemble, setup.batches, setup.device, setup.autocast)
    time_e2e(photos[: args.batch_size], ckpt, tmp / "warmup", args, trainer)  # warm-up, untimed in the ratio
    time_forward(setup.ensemble, setup.batches[:1], setup.device, setup.autocast)
    short = photos[: max(args.batch_size, len(photos) // 4 // args.batch_size * args.batch_size)]
    e2e, e2e_short, forward = [], [], []
    for _ in range(ROUNDS):
        e2e.append(time_e2e(photos, ckpt, tmp / "out", args, trainer))
        e2e_short.append(time_e2e(short, ckpt, tmp / "short", args, trainer))
        forward.append(time_forward(*forward_args))
    checks = [check_seconds(photos) for _ in range(ROUNDS)]
    masks = written_masks(tmp / "out", photos)
    rle_s, runs = rle_seconds(photos, masks)
    decode_s, png_s = side_seconds(tmp / "out", photos, masks)
    return Timings(len(photos), len(short), e2e, e2e_short, forward, checks, rle_s, runs, decode_s, png_s)


def report_rounds(t: Timings) -> tuple[float, float, float]:
    """Print the median round's e2e, forward and long-run rates -> (e2e seconds, forward seconds, long-run photos/s)."""
    n, m = t.n, t.m
    # photos/s once started, per round: the run's start cancels out of the difference
    long_runs = [(n - m) / (long - brief) for long, brief in zip(t.e2e, t.e2e_short)]
    ratios = [rate * f / n for rate, f in zip(long_runs, t.forward)]
    middle = sorted(range(ROUNDS), key=lambda i: ratios[i])[ROUNDS // 2]  # the median round
    e2e_s, short_s, forward_s, long_run = t.e2e[middle], t.e2e_short[middle], t.forward[middle], long_runs[middle]
    once = e2e_s - n / long_run
    print(f"e2e      {n / e2e_s:7.2f} photos/s  ({n} photos {e2e_s:.2f} s; rounds "
          f"{', '.join(f'{s:.2f}' for s in t.e2e)})")
    print(f"e2e      {m / short_s:7.2f} photos/s  ({m} photos {short_s:.2f} s; rounds "
          f"{', '.join(f'{s:.2f}' for s in t.e2e_short)})")
    print(f"forward  {n / forward_s:7.2f} photos/s  ({forward_s:.2f} s; rounds "
          f"{', '.join(f'{s:.2f}' for s in t.forward)})")
    print(f"long run {long_run:7.2f} photos/s: ({n} - {m}) photos / ({e2e_s:.2f} - {short_s:.2f}) s; a run's "
          f"start costs {once:.2f} s once (checkpoint load, Trainer, workers, filling and draining the pipeline); "
          f"load average now {os.getloadavg()[0]:.1f}")
    print(f"e2e_vs_forward of each round: {', '.join(f'{r:.3f}' for r in ratios)} (the median round is shown above)")
    return e2e_s, forward_s, long_run


def report(t: Timings) -> None:
    """Print the rates, the shares of the work around the model, and the last line `e2e_vs_forward=<ratio>`."""
    n = t.n
    e2e_s, forward_s, long_run = report_rounds(t)
    print(f"around the model, one thread: JPEG decode {1000 * t.decode_s / n:.0f} ms/photo, PNG write "
          f"{1000 * t.png_s / n:.0f} ms/photo = {100 * (t.decode_s + t.png_s) / forward_s:.1f}% of the forward time "
          f"(on a CPU they take cores from the model)")
    print(f"threshold + rle_encode + row {1000 * t.rle_s / n:.1f} ms/mask ({t.runs:.0f} runs/mask), "
          f"{100 * t.rle_s / e2e_s:.1f}% of the e2e time")
    print(f"rle_share={100 * t.rle_s / e2e_s:.1f}%")
    check_s = sorted(t.checks)[ROUNDS // 2]
    print(f"photo check (every photo decoded at 1/8 scale in {default_workers(1)} processes, before the run) "
          f"{1000 * check_s / n:.1f} ms/photo; rounds {', '.join(f'{c:.2f}' for c in t.checks)} s")
    print(f"check_share={100 * check_s / e2e_s:.1f}%")
    print(f"whole_call_vs_forward={forward_s / e2e_s:.3f}  ({n} photos, the run's start included)")
    print(f"e2e_vs_forward={long_run * forward_s / n:.3f}")


def main() -> None:
    args = parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        setup = set_up(tmp, args)
        describe(setup, args)
        if args.channels_last or args.compile or args.runtime == "onnx":
            switches = compare_switches(args, setup.ckpt, tmp, setup.photos, setup.batches, setup.device,
                                        setup.autocast)
            for label, ratio in switches.items():  # now: a run stopped during 1.-5. keeps them
                print(f"{label}={ratio:.3f}", flush=True)
        if args.compare_only:
            return
        timings = measure(setup, tmp, args)
    report(timings)


if __name__ == "__main__":
    main()
