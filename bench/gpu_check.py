"""Every GPU path of the project in one run, time-boxed, with a table and a JSON file of figures.

    timeout 600 .venv/bin/python bench/gpu_check.py [--out gpu_check.json] [--budget 470]

Without CUDA it prints one line and exits 0 (CI runs it so). With CUDA, stages in this order, each in its own process
with its own time limit, all within --budget seconds; a stage that fails or runs out of time is reported in the table
and the others go on (a stage whose input failed is skipped):
  data             the synthetic set at 1918x1280 (3 training cars, 1 test car), generated here, folds in 3
  train_bf16_full  train.py trainer=gpu trainer.precision=bf16-mixed, resnet50 U-Net, full photo (padded 1280x1920)
  predict          predict.py at 1918x1280 from that checkpoint, tta=hflip write=[png,rle], outputs counted
  train_16_full    as train_bf16_full with 16-mixed
  train_16_crop    16-mixed on 1024x1024 crops (validation on the full photo)
  train_bf16_crop  bf16-mixed on 1024x1024 crops
  train_ddp        trainer=ddp on every visible GPU (16-mixed), 1024x1024 crops
  predict_bench    bench/predict_throughput.py --encoder resnet50 --input-size full --precision 16-mixed
                   --channels-last --compile: e2e_vs_forward, forward and long-run photos/s, the switches' ratios
  copy             predict() with the writer waiting on the copy's event against .cpu() after every batch
                   (resnet50 full size, 16-mixed): photos/s of each, async_copy_vs_sync, whether the PNGs are equal
  train_bench      bench/train_throughput.py --only-switches on the GPU: resnet50 U-Net at 1280x1920, bf16-mixed,
                   Lightning images/s, channels_last_vs_default, compile_vs_default (one round: compiling is long)
Training stages are one short epoch (6 steps of 4 photos, 4 validation batches). Every stage also reports the peak
GPU memory its (first) process allocated. The JSON file is rewritten after each stage: a run killed midway keeps
what it measured.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# runs a script as `python script args` would, and reports the peak GPU memory of this process when it exits
WRAP = """
import atexit, runpy, sys, torch
def peak():
    if torch.cuda.is_available():
        print(f"gpu_check_peak_gib={torch.cuda.max_memory_allocated() / 2**30:.2f}", flush=True)
atexit.register(peak)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
FIGURE = re.compile(r"\b([a-z][a-z0-9_]*)=([-+0-9.eE]+|true|false)(?=[\s%(,]|$)")
# (name, seconds at most, the stage it needs)
STAGES = [
    ("data", 90, None),
    ("train_bf16_full", 90, "data"),
    ("predict", 60, "train_bf16_full"),
    ("train_16_full", 75, "data"),
    ("train_16_crop", 75, "data"),
    ("train_bf16_crop", 75, "data"),
    ("train_ddp", 90, "data"),
    ("predict_bench", 150, None),
    ("copy", 90, "data"),
    ("train_bench", 180, None),
]


def train_words(root: Path, out: Path, *extra: str) -> list[str]:
    """train.py overrides: one short epoch of the resnet50 U-Net on the synthetic set, from scratch (no network)."""
    return ["data=synthetic", f"data.root={root}", f"data.folds={root / 'folds.csv'}", "~data.generate",
            "encoder=resnet50", "model.encoder_weights=null", "trainer.max_epochs=1", "trainer.limit_train_batches=6",
            "trainer.limit_val_batches=4", "model.bn_recalibration_batches=2", "data.batch_size=4",
            "data.num_workers=8", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}", *extra]


def commands(name: str, work: Path, results: dict) -> list[str]:
    """The command line of a stage."""
    root, python = work / "data", sys.executable
    crop, full = ["data.crop_size=[1024,1024]", "data.input_size=null"], ["data.crop_size=null", "data.input_size=null"]
    if name == "data":
        return [python, __file__, "--stage", "data", "--work", str(work)]
    if name.startswith("train_") and name != "train_bench":
        precision = "bf16-mixed" if "bf16" in name else "16-mixed"
        trainer = ["trainer=ddp"] if name == "train_ddp" else ["trainer=gpu", f"trainer.precision={precision}"]
        sizes = full if name.endswith("full") else crop
        return [python, "-c", WRAP, "train.py", *train_words(root, work / name, *trainer, *sizes)]
    if name == "predict":
        ckpt = results["train_bf16_full"]["figures"]["checkpoint"]
        return [python, "-c", WRAP, "predict.py", f"ckpt={ckpt}", f"input_dir={root / 'test'}",
                f"output_dir={work / 'predict'}", "tta=hflip", "write=[png,rle]", "trainer=gpu",
                "trainer.enable_progress_bar=false", f"hydra.run.dir={work / 'predict-hydra'}"]
    if name == "predict_bench":
        return [python, "-c", WRAP, "bench/predict_throughput.py", "--encoder", "resnet50", "--input-size", "full",
                "--precision", "16-mixed", "--batch-size", "8", "--photos", "32", "--channels-last", "--compile"]
    if name == "train_bench":
        return [python, "-c", WRAP, "bench/train_throughput.py", "--only-switches", "--accelerator", "gpu",
                "--precision", "bf16-mixed", "--encoder", "resnet50", "--size", "1280", "1920", "--batch-size", "4",
                "--steps", "8", "--rounds", "1", "--channels-last", "--compile"]
    return [python, __file__, "--stage", "copy", "--work", str(work)]


def figures_of(name: str, stdout: str, work: Path) -> dict:
    """The figures a stage printed (key=value words), and what its files show."""
    found = {}
    for line in stdout.splitlines():
        found.update({k: (v == "true") if v in ("true", "false") else float(v) for k, v in FIGURE.findall(line)})
        if line.startswith("val_dice=") and " checkpoint=" in line:
            found["checkpoint"] = line.split(" checkpoint=", 1)[1].strip()
        for label in ("forward", "long run"):
            match = re.match(rf"^{label}\s+([0-9.]+) photos/s", line)
            if match:
                found[f"{label.replace(' ', '_')}_photos_per_s"] = float(match[1])
    if "gpu_check_peak_gib" in found:
        found["peak_gpu_gib"] = found.pop("gpu_check_peak_gib")
    if name == "predict":
        out = work / "predict"
        found["pngs"] = len(list(out.glob("*.png")))
        found["rle_rows"] = sum(len(p.read_text().splitlines()) - 1 for p in out.glob("rle-rank*.csv"))
    keep = {"e2e_vs_forward", "forward_photos_per_s", "long_run_photos_per_s", "channels_last_vs_default",
            "compile_vs_default", "lightning_images_per_s", "peak_gpu_gib", "val_dice", "checkpoint", "predicted",
            "pngs", "rle_rows", "async_photos_per_s", "sync_photos_per_s", "async_copy_vs_sync", "same_masks",
            "photos", "seconds"}
    return {k: v for k, v in found.items() if k in keep}


def run_stage(name: str, limit: float, work: Path, results: dict) -> dict:
    """Run one stage in its own process group within `limit` seconds -> its record."""
    start = time.perf_counter()
    record = {"status": "ok", "seconds": 0.0, "figures": {}, "error": ""}
    try:
        # its own process group: a stage out of time goes with its DDP ranks and DataLoader workers
        proc = subprocess.Popen(commands(name, work, results), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            record["status"] = f"timeout ({limit:.0f} s)"
        (work / f"{name}.log").write_text(stdout + "\n--- stderr ---\n" + stderr)
        record["figures"] = figures_of(name, stdout, work)
        last = (stderr.strip() or stdout.strip()).splitlines()
        if record["status"] == "ok" and proc.returncode != 0:
            record["status"], record["error"] = f"failed ({proc.returncode})", last[-1][:300] if last else ""
        elif record["status"] == "ok" and name == "predict" and not (
                record["figures"].get("pngs") == record["figures"].get("rle_rows") == 16):
            record["status"] = "failed (outputs)"
            figures = record["figures"]
            record["error"] = f"16 photos: {figures.get('pngs')} PNGs, {figures.get('rle_rows')} rle rows"
    except Exception as err:  # noqa: BLE001 -- one stage's surprise is reported, the others go on
        record["status"], record["error"] = "failed", f"{type(err).__name__}: {err}"[:300]
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def stage_data(work: Path) -> None:
    """The synthetic set at Kaggle's size, few cars (fast), and its folds."""
    from carvana.data.kfold import write_folds
    from carvana.synthetic import make_dataset

    start = time.perf_counter()
    root = make_dataset(work / "data", train_cars=3, test_cars=1, size=(1280, 1918), seed=0)
    write_folds(root / "metadata.csv", root / "folds.csv", n_folds=3, seed=80, stratify=None)
    print(f"photos={len(list((root / 'train').glob('*.jpg')))} seconds={time.perf_counter() - start:.1f}")


def copy_checkpoint(work: Path) -> Path:
    """A resnet50 U-Net at full size (padded 1280x1920), random weights, in the format train.py writes."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir

    from carvana.model.module import SegModule
    from carvana.training.run import module_kwargs, settings_of

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        train_cfg = compose(config_name="config", overrides=["encoder=resnet50", "model.encoder_weights=null",
                                                             "data.crop_size=null"])
    torch.manual_seed(0)
    module = SegModule(**module_kwargs(settings_of(train_cfg), {"image_size": [1280, 1918]}))
    ckpt = work / "copy.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    return ckpt


def copy_photos(work: Path, count: int = 64) -> list[Path]:
    """`count` links under work/copy-in to the generated test photos, cycled, with distinct Carvana-style names."""
    originals = sorted((work / "data" / "test").glob("*.jpg"))
    (work / "copy-in").mkdir(exist_ok=True)
    photos = []
    for i in range(count):
        photo = work / "copy-in" / f"copy{i // 16:04d}_{i % 16 + 1:02d}.jpg"
        photo.symlink_to(originals[i % len(originals)])
        photos.append(photo)
    return photos


def time_gpu_predict(ckpt: Path, photos: list[Path], out: Path) -> float:
    """Seconds of one predict() over the photos' folder into `out` (emptied first), 16-mixed on one GPU."""
    from carvana.cli import compose as compose_tool
    from carvana.predict.run import run

    shutil.rmtree(out, ignore_errors=True)
    cfg = compose_tool("predict", [f"ckpt={ckpt}", f"input_dir={photos[0].parent}", f"output_dir={out}",
                                   "trainer=gpu", "trainer.devices=1", "trainer.precision=16-mixed",
                                   "trainer.enable_progress_bar=false", "batch_size=8", "num_workers=8", "tta=none"])
    start = time.perf_counter()
    line = run(cfg)
    assert f"predicted={len(photos)} " in line, line
    return time.perf_counter() - start


def stage_copy(work: Path) -> None:
    """photos/s of predict() with copy_probs8 (pinned, event) and with .cpu() after each batch, alternating."""
    from unittest import mock

    from carvana.predict import ensemble
    from carvana.predict.writer import HostProbs8, to_probs8

    ckpt, photos = copy_checkpoint(work), copy_photos(work)
    # the copy as it was: .cpu() waits for it after every batch
    sync = mock.patch.object(ensemble, "copy_probs8", lambda p: HostProbs8(to_probs8(p)))
    time_gpu_predict(ckpt, photos, work / "copy-warm")
    seconds = {"async": [], "sync": []}
    for _ in range(2):
        seconds["async"].append(time_gpu_predict(ckpt, photos, work / "copy-async"))
        with sync:
            seconds["sync"].append(time_gpu_predict(ckpt, photos, work / "copy-sync"))
    same = all((work / "copy-async" / f"{p.stem}.png").read_bytes()
               == (work / "copy-sync" / f"{p.stem}.png").read_bytes() for p in photos)
    rates = {k: len(photos) / min(v) for k, v in seconds.items()}
    print(f"async_photos_per_s={rates['async']:.2f} sync_photos_per_s={rates['sync']:.2f} "
          f"async_copy_vs_sync={rates['async'] / rates['sync']:.3f} same_masks={'true' if same else 'false'}")


def table(results: dict) -> str:
    """The stages as aligned text rows."""
    rows = [f"{'stage':<16} {'status':<16} {'seconds':>7}  figures"]
    for name, record in results.items():
        figures = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in record["figures"].items()
                           if k != "checkpoint")
        rows.append(f"{name:<16} {record['status']:<16} {record['seconds']:>7.1f}  {figures}"
                    + (f"  [{record['error']}]" if record["error"] else ""))
    return "\n".join(rows)


def write_json(path: Path, environment: dict, results: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"environment": environment, "stages": results}, indent=2) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file of figures")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for all stages together")
    parser.add_argument("--stage", choices=["data", "copy"], help=argparse.SUPPRESS)  # this script's own stages
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        {"data": stage_data, "copy": stage_copy}[args.stage](args.work)
        return
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible (torch {torch.__version__}): nothing to check, no figures written")
        return
    environment = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
                   "gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count(),
                   "bf16": torch.cuda.is_bf16_supported(), "budget_s": args.budget}
    print(f"gpu_check: {environment['gpus']} x {environment['gpu']}, torch {environment['torch']} (CUDA "
          f"{environment['cuda']}), {environment['cpus']} CPUs, budget {args.budget:.0f} s", flush=True)
    deadline = time.perf_counter() + args.budget
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        for name, cap, needs in STAGES:
            left = deadline - time.perf_counter()
            if needs and results.get(needs, {}).get("status") != "ok":
                results[name] = {"status": "skipped", "seconds": 0.0, "figures": {}, "error": f"needs {needs}"}
            elif left < 15:
                results[name] = {"status": "skipped", "seconds": 0.0, "figures": {}, "error": "out of time"}
            else:
                results[name] = run_stage(name, min(cap, left), work, results)
            print(f"{name}: {results[name]['status']} ({results[name]['seconds']:.0f} s)", flush=True)
            write_json(args.out, environment, results)
        print(table(results))
        logs = args.out.with_suffix(".logs")
        try:  # the stages' outputs without photos, masks and checkpoints
            shutil.rmtree(logs, ignore_errors=True)
            shutil.copytree(work, logs, ignore=shutil.ignore_patterns("*.jpg", "*.gif", "*.png", "*.ckpt", "*.csv"))
            print(f"figures: {args.out}; each stage's output: {logs}/<stage>.log")
        except OSError as err:
            print(f"figures: {args.out}; the stages' logs could not be kept ({err})")


if __name__ == "__main__":
    main()
