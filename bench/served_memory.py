"""The service's peak memory (RSS) for one large photo, with the forward bounded by max_input_pixels (tiles) and
without: the figures of docs/serving.md.

    .venv/bin/python bench/served_memory.py [--side 4900] [--runs tiles at_bound whole]

The model is a full-resolution mobilenet_v2 U-Net (bench/predict_throughput.py's, data.input_size=null, random
weights) on the CPU in float32, tta=none (hflip's two passes run one after the other: the same peak). For each setting
a fresh `python -m carvana.serve` starts (its warm-up is a 1280x1918 photo), one side x side JPEG is posted, and the
process's VmHWM (peak resident set) is read from /proc: `peak_rss_gb`; `start_rss_gb` is VmHWM before the photo.
"""

import argparse
import http.client
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from predict_throughput import make_checkpoint

from carvana.data.io import write_image

ROOT = Path(__file__).resolve().parents[1]
# the service's settings of each run
RUNS = {"tiles": [], "tiles_2.5mp": ["max_input_pixels=2500000"], "at_bound": [],
        "whole": ["max_input_pixels=25000000"]}


def peak_rss_gb(pid: int) -> float:
    """VmHWM of a process, in GB (10^9 bytes)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text)[1]) * 1024 / 1e9


def serve(ckpt: Path, words: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    """python -m carvana.serve on a free port -> (process, port) once /health answers."""
    proc = subprocess.Popen([sys.executable, "-m", "carvana.serve", f"ckpt={ckpt}", "port=0", "tta=none",
                             "device=cpu", "log_level=warning", *words], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=log.open("w"), text=True)
    for line in proc.stdout:
        if match := re.search(r" on http://[\d.]+:(\d+) ", line):
            break
    else:
        raise SystemExit(f"the service did not start:\n{log.read_text()}")
    for _ in range(600):  # the address is printed once bound; /health answers once uvicorn listens
        try:
            connection = http.client.HTTPConnection("127.0.0.1", int(match[1]), timeout=10)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return proc, int(match[1])
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the service did not answer /health:\n{log.read_text()}")


def post(port: int, data: bytes) -> int:
    """POST /predict with the photo -> the status."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'.encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    connection.request("POST", "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = connection.getresponse()
    response.read()
    return response.status


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=4900, help="the photo's side (4900: the issue's 24 MP photo)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS,
                        help="tiles: the photo in tiles (the defaults); tiles_2.5mp: 2 tiles a forward; at_bound: a "
                             "photo of 9.8 MP input, whole; whole: the photo whole (~10.5 GB at 4900)")
    args = parser.parse_args()
    settings = {name: RUNS[name] for name in args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "full.ckpt", "mobilenet_v2", None)
        yy, xx = np.mgrid[: args.side, : args.side]
        write_image(tmp / "big.jpg", np.dstack([xx % 256, yy % 256, (xx ^ yy) % 256]).astype(np.uint8))
        bound = 3136  # 3136x3136: an input of 9.8 MP, the most the default max_input_pixels takes whole
        write_image(tmp / "bound.jpg", np.dstack([xx % 256, yy % 256, xx % 7])[:bound, :bound].astype(np.uint8))
        for name, words in settings.items():
            photo = tmp / ("bound.jpg" if name == "at_bound" else "big.jpg")
            side = bound if name == "at_bound" else args.side
            proc, port = serve(ckpt, words, tmp / f"{name}.log")
            try:
                start = peak_rss_gb(proc.pid)
                began = time.monotonic()
                status = post(port, photo.read_bytes())
                print(f"{name}: photo {side}x{side} {' '.join(words) or '(defaults)'} status={status} "
                      f"start_rss_gb={start:.2f} peak_rss_gb={peak_rss_gb(proc.pid):.2f} "
                      f"seconds={time.monotonic() - began:.0f}", flush=True)
                if status != 200:
                    print((tmp / f"{name}.log").read_text()[-3000:], flush=True)
            finally:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
