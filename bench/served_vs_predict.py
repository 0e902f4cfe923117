"""Served against predict.py: photos/s of concurrent clients of python -m carvana.serve against predict.py on the
same photos and checkpoint, and one client's latency.

    .venv/bin/python bench/served_vs_predict.py [--photos 32] [--clients 8] [--ckpt PATH] [--tta hflip]

1. served: the service (python -m carvana.serve on a free port of 127.0.0.1, its defaults: max_batch 4, max_wait_ms 10,
   torch threads = the CPUs), warm. `--clients` threads, each with its own keep-alive connection, post their share of
   the photos (the JPEG bytes read beforehand) and read the PNG masks back; photos/s from the first request to the last
   answer. The photos are 1918x1280: each request decodes a JPEG, the mask comes back at 1918x1280.
2. predict: carvana.predict.run.run (what predict.py runs) on the same photos, checkpoint and TTA with predict.py's
   defaults (batch_size 4, DataLoader workers, 4 writer threads), in this process, once on N photos and once on N/4.
   The service is already started; predict.py pays for its start (Trainer, workers, the photo check) in each run.
   `served_vs_predict` compares with predict.py's long-run rate, (N - N/4) / (t(N) - t(N/4)), in which that start
   cancels; `served_vs_predict_whole_call` with its whole N-photo call.
3. latency: one client posting the photos one after the other: p50_ms, p95_ms of a request.
Rounds: a warm-up of both, then ROUNDS rounds of (served, predict N, predict N/4), the order of the service and
predict.py swapped every other round; each round gives its ratio, the median counts (this machine's speed drifts).
The model is bench/predict_throughput.py's: a mobilenet_v2 U-Net at input 320x480, random weights (--ckpt: another).
"""

import argparse
import http.client
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

from predict_throughput import INPUT_SIZE, find_photos, make_checkpoint

from carvana.cli import compose
from carvana.predict.run import run

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3


def start_service(ckpt: Path, tta: str, log: Path) -> tuple[subprocess.Popen, str, int]:
    """python -m carvana.serve on a free port -> (process, host, port) once it prints its address."""
    proc = subprocess.Popen([sys.executable, "-m", "carvana.serve", f"ckpt={ckpt}", "port=0", f"tta={tta}",
                             "log_level=warning"], cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    for line in proc.stdout:
        match = re.search(r" on http://([\d.]+):(\d+) ", line)
        if match:
            break
    else:
        raise SystemExit(f"the service did not start:\n{log.read_text()}")
    for _ in range(600):  # the address is printed once bound; /health answers once uvicorn listens
        try:
            connection = http.client.HTTPConnection(match[1], int(match[2]), timeout=10)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return proc, match[1], int(match[2])
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the service did not answer /health:\n{log.read_text()}")


def multipart(data: bytes) -> tuple[bytes, str]:
    """A multipart body with `data` as the field image -> (body, content type)."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def client(host: str, port: int, bodies: list[tuple[bytes, str]], latencies: list[float]) -> None:
    """Post each body on one keep-alive connection; each answer must be a PNG."""
    connection = http.client.HTTPConnection(host, port, timeout=300)
    for body, content_type in bodies:
        start = time.perf_counter()
        connection.request("POST", "/predict", body, {"Content-Type": content_type})
        response = connection.getresponse()
        answer = response.read()
        latencies.append(time.perf_counter() - start)
        assert response.status == 200 and answer[:4] == b"\x89PNG", (response.status, answer[:200])
    connection.close()


def time_served(host: str, port: int, bodies: list[tuple[bytes, str]], clients: int) -> float:
    """Seconds for `clients` threads to get the masks of all bodies, each its share."""
    threads = [threading.Thread(target=client, args=(host, port, bodies[i::clients], [])) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def time_predict(photos: list[Path], ckpt: Path, tmp: Path, tta: str) -> float:
    """Seconds of one predict run over the photos (a folder of links to them) into an empty folder."""
    folder, out = tmp / f"in-{len(photos)}-{uuid.uuid4().hex[:6]}", tmp / f"out-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    cfg = compose("predict", [f"ckpt={ckpt}", f"input_dir={folder}", f"output_dir={out}", f"tta={tta}"])
    cfg["trainer"].update(enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    line = run(cfg)
    seconds = time.perf_counter() - start
    assert line.startswith(f"predicted={len(photos)} "), line
    return seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=32, help="photos of a round (predict's short run: a quarter)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the service")
    parser.add_argument("--ckpt", type=Path, default=None,
                        help=f"a checkpoint (default: random weights at {INPUT_SIZE})")
    parser.add_argument("--tta", default="hflip", choices=["hflip", "none"], help="both sides' TTA (their default)")
    return parser.parse_args()


def time_rounds(address: tuple[str, int], photos: list[Path], ckpt: Path, tmp: Path,
                args: argparse.Namespace) -> dict[str, list[float]]:
    """A warm-up, then ROUNDS rounds of the service and predict.py (whole and short run), the service first every
    other round; then one client's latencies -> {served, whole, brief, latencies: seconds}."""
    host, port = address
    bodies = [multipart(p.read_bytes()) for p in photos]
    short = photos[: len(photos) // 4]
    time_served(host, port, bodies[: args.clients], args.clients)  # warm-up, untimed
    time_predict(short, ckpt, tmp, args.tta)
    served, whole, brief = [], [], []
    for round_ in range(ROUNDS):
        if round_ % 2:
            served.append(time_served(host, port, bodies, args.clients))
        whole.append(time_predict(photos, ckpt, tmp, args.tta))
        brief.append(time_predict(short, ckpt, tmp, args.tta))
        if not round_ % 2:
            served.append(time_served(host, port, bodies, args.clients))
    latencies = []
    client(host, port, bodies[:16], latencies)
    return {"served": served, "whole": whole, "brief": brief, "latencies": latencies}


def report(times: dict[str, list[float]], n: int, clients: int) -> None:
    """Print the median round's rates, each round's ratio, the latencies; the last line `served_vs_predict=`."""
    served, whole, brief, m = times["served"], times["whole"], times["brief"], n // 4
    long_run = [(n - m) / (w - b) for w, b in zip(whole, brief)]
    ratios = [n / s / rate for s, rate in zip(served, long_run)]
    whole_ratios = [w / s for s, w in zip(served, whole)]
    middle = sorted(range(ROUNDS), key=lambda i: ratios[i])[ROUNDS // 2]
    print(f"served    {n / served[middle]:6.2f} photos/s  ({clients} clients; rounds "
          f"{', '.join(f'{s:.2f}' for s in served)} s)")
    print(f"predict   {n / whole[middle]:6.2f} photos/s  (whole call of {n}; rounds "
          f"{', '.join(f'{s:.2f}' for s in whole)} s; {m} photos: {', '.join(f'{s:.2f}' for s in brief)} s)")
    print(f"predict   {long_run[middle]:6.2f} photos/s  long run: ({n} - {m}) photos / ({whole[middle]:.2f} - "
          f"{brief[middle]:.2f}) s")
    print(f"served_vs_predict of each round: {', '.join(f'{r:.3f}' for r in ratios)}")
    ms = sorted(1000 * s for s in times["latencies"])
    print(f"one client, {len(ms)} requests: {', '.join(f'{v:.0f}' for v in ms)} ms; load average now "
          f"{os.getloadavg()[0]:.1f}")
    print(f"served_vs_predict_whole_call={sorted(whole_ratios)[ROUNDS // 2]:.3f}")
    print(f"p50_ms={ms[len(ms) // 2]:.0f}")
    print(f"p95_ms={ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]:.0f}")
    print(f"served_vs_predict={ratios[middle]:.3f}")


def main() -> None:
    args = parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        photos, source = find_photos(tmp, args.photos)
        ckpt = args.ckpt or make_checkpoint(tmp / "bench.ckpt", "mobilenet_v2", [int(s) for s in INPUT_SIZE.split("x")])
        proc, host, port = start_service(ckpt, args.tta, tmp / "service.log")
        try:
            print(f"{len(photos)} photos 1280x1918 (height x width, {source}), {args.clients} clients, "
                  f"tta={args.tta}, {'random weights' if args.ckpt is None else ckpt}; {os.cpu_count()} CPUs, load "
                  f"average {os.getloadavg()[0]:.1f}", flush=True)
            times = time_rounds((host, port), photos, ckpt, tmp, args)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    report(times, len(photos), args.clients)


if __name__ == "__main__":
    main()
