"""python -m carvana.serve: predict.py's bytes over HTTP, concurrent requests batched by photo size, every bad input
answered in one JSON line with the service healthy afterwards, SIGTERM with a request in flight, the page in Chromium.
One service process for the module (tiny random-weight U-Net, 64x96 network input) and one short-lived for SIGTERM."""

import asyncio
import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import (
    MAX_PIXELS,
    REPO,
    SHARED_DATA,
    Service,
    decode,
    get,
    post,
    predict_args,
    predict_here,
    serving_here,
    write_checkpoint,
)

from carvana import CarvanaError
from carvana.cli import compose
from carvana.data.io import probs_cut, read_probs8, write_image
from carvana.data.photo_check import check_photos
from carvana.data.rle import rle_encode
from carvana.predict.cutout import alpha_from_probs
from carvana.serve.batcher import Batcher

for _package in ("fastapi", "uvicorn", "python_multipart"):
    pytest.importorskip(_package, reason="pip install -e '.[serve]' installs the service's packages")

SIZES = {"car_01.jpg": (64, 96), "car_02.png": (80, 112)}  # (h, w), non-square; two sizes: two kinds of forward
CHROMIUM = shutil.which("chromium")  # Debian's package, as tests/test_report.py's browser test
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# docs/serving.png: CARVANA_SERVING_CKPT=<a trained checkpoint> CARVANA_SERVING_SCREENSHOT=docs/serving.png
# pytest tests/test_serve.py -k chromium (the page test on a service of that checkpoint, its screenshot kept there)
SCREENSHOT = os.environ.get("CARVANA_SERVING_SCREENSHOT")
SCREENSHOT_CKPT = os.environ.get("CARVANA_SERVING_CKPT")


def health(url: str) -> dict:
    status, _, body = get(url + "/health")
    assert status == 200, body
    return json.loads(body)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Photos of two sizes (a JPEG, an RGBA PNG), the tiny checkpoint, the module's service and the SIGTERM one."""
    tmp = tmp_path_factory.mktemp("serve")
    ckpt = write_checkpoint(tmp / "tiny.ckpt", input_size=[64, 96])  # random weights: noisy masks, every level
    photos = tmp / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, size in SIZES.items():
        yy, xx = np.mgrid[: size[0], : size[1]]
        image = np.dstack([xx * 2, yy * 3, rng.integers(0, 255, size)]).astype(np.uint8)
        if name.endswith(".png"):  # RGBA: the service drops the alpha as read_image does
            cv2.imwrite(str(photos / name), np.dstack([image, rng.integers(0, 255, size, dtype=np.uint8)]))
        else:
            write_image(photos / name, image)
    # both start at once: their imports overlap
    main = Service(tmp / "main", ckpt, "max_wait_ms=50", "max_queue=16")
    short = Service(tmp / "short", ckpt, "max_queue=1", "max_wait_ms=2000", "log_level=warning")
    try:
        yield {"tmp": tmp, "ckpt": ckpt, "photos": photos, "url": main.ready().url, "main": main,
               "short": short.ready()}
    finally:
        main.kill()
        short.kill()


def test_health_names_the_model_and_its_geometry(served: dict) -> None:
    about = health(served["url"])
    assert about["status"] == "ok" and about["model"] == "unet mobilenet_v2", about
    assert about["checkpoints"] == ["tiny.ckpt"] and about["tta"] == "hflip" and about["threshold"] == 0.5
    assert about["geometry"] == [{"key": "64x96", "mode": "resize", "input_size": [64, 96]}], about
    assert about["device"] == "cpu" and about["precision"] == "32-true"


def test_predict_equals_predict_py(served: dict, tmp_path: Path) -> None:
    """The PNG, the cut-out and the RLE of each photo are predict.py's for the same checkpoint, with hflip TTA and
    without; each photo is alone in its batch both ways (its own size)."""
    out = {}
    for tta in ("hflip", "none"):
        out[tta] = tmp_path / tta
        run = predict_here(predict_args(served["ckpt"], out[tta], f"input_dir={served['photos']}", "trainer=cpu",
                                        f"tta={tta}", "write=[png,cutout]"))
        assert run.code == 0 and run.summary()["predicted"] == "2", run.err[-2000:]
    for name, size in SIZES.items():
        data, stem = (served["photos"] / name).read_bytes(), Path(name).stem
        status, headers, body = post(served["url"], data)
        assert status == 200 and headers["content-type"] == "image/png", body[:200]
        probs8 = decode(body)
        assert probs8.shape == size and probs8.dtype == np.uint8
        assert np.array_equal(probs8, read_probs8(out["hflip"] / f"{stem}.png"))
        assert 0 < (probs8 > 127).mean() < 1, "random weights: some pixels on each side of the threshold"
        status, _, body = post(served["url"], data, "?tta=none")
        assert status == 200 and np.array_equal(decode(body), read_probs8(out["none"] / f"{stem}.png"))
        assert not np.array_equal(decode(body), probs8), "tta=none is one pass, not hflip's mean"
        status, headers, body = post(served["url"], data, "?output=cutout")
        cut = decode(body)
        assert status == 200 and cut.shape == (*size, 4) and headers["content-type"] == "image/png"
        assert np.array_equal(cut, cv2.imread(str(out["hflip"] / "cutouts" / f"{stem}.png"), cv2.IMREAD_UNCHANGED))
        assert np.array_equal(cut[..., 3], alpha_from_probs(probs8, probs_cut(0.5))), "cutout_alpha=probs"
        status, headers, body = post(served["url"], data, "?output=rle")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert body.decode() == rle_encode(probs8 > probs_cut(0.5)) and body.count(b" ") > 10


def test_load_8_clients_batched_by_size(served: dict) -> None:
    """8 clients x 4 requests at once, photos of two sizes: every answer is the photo's own mask, photos of one size
    shared forwards, and the service is healthy afterwards."""
    url, photos = served["url"], {name: (served["photos"] / name).read_bytes() for name in SIZES}
    alone = {name: decode(post(url, data)[2]) for name, data in photos.items()}  # each in a forward of its own
    before = health(url)
    results, start = [], threading.Barrier(8)

    def client(index: int) -> None:
        start.wait()
        for request in range(4):
            name = list(SIZES)[(index + request) % 2]
            status, _, body = post(url, photos[name], timeout=60)
            results.append((name, status, body))

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in clients), "a client hung"
    assert len(results) == 32 and all(status == 200 for _, status, _ in results), [r[:2] for r in results]
    for name, _, body in results:
        mask = decode(body)
        # a forward of several photos may round a level apart on some CPUs (predict.py's batches do the same)
        diff = np.abs(mask.astype(int) - alone[name].astype(int))
        assert mask.shape == SIZES[name] and diff.max() <= 1 and (diff > 0).mean() < 1e-3, (name, diff.max())
    after = health(url)
    forwards, photos_done = after["forwards"] - before["forwards"], after["photos"] - before["photos"]
    assert photos_done == 32 and forwards < 32, (forwards, photos_done)  # some forwards held several photos
    assert after["answered"] - before["answered"] == 32 and after["admitted"] == after["waiting"] == 0


def big_png(height: int, width: int) -> bytes:
    ok, data = cv2.imencode(".png", np.zeros((height, width), np.uint8))
    assert ok
    return data.tobytes()


def test_bad_input_is_one_json_line_and_the_service_goes_on(served: dict) -> None:
    url = served["url"]
    jpeg = (served["photos"] / "car_01.jpg").read_bytes()
    png = (served["photos"] / "car_02.png").read_bytes()
    cases = [  # (what, the request, status, a part of the message)
        ("not an image", lambda: post(url, b"just some text\n" * 20), 422, "not a readable image"),
        ("truncated JPEG", lambda: post(url, jpeg[: len(jpeg) // 2]), 422, "truncated"),
        ("truncated PNG", lambda: post(url, png[: len(png) - 40]), 422, "is corrupt (libpng error"),
        ("empty file", lambda: post(url, b""), 422, "empty"),
        ("missing field", lambda: post(url, jpeg, field="photo"), 400, "'image'"),
        ("unknown output", lambda: post(url, jpeg, "?output=gif"), 400, "output=gif: choose one of png, cutout, rle"),
        ("unknown tta", lambda: post(url, jpeg, "?tta=vflip"), 400, "tta=vflip"),
        ("over max_pixels", lambda: post(url, big_png(1000, 2600)), 413, f"max_pixels={MAX_PIXELS}"),
        ("not multipart", lambda: get_raw(url), 415, "multipart/form-data"),
        ("unknown route", lambda: get(url + "/nope"), 404, "GET /nope"),
        ("wrong method", lambda: get(url + "/predict"), 405, "POST /predict"),
    ]
    for what, send, expected, fragment in cases:
        status, headers, body = send()
        assert status == expected and headers["content-type"] == "application/json", (what, status, body[:300])
        message = json.loads(body)
        assert list(message) == ["error"] and fragment in message["error"], (what, message)
        assert "\n" not in message["error"] and "Traceback" not in message["error"], (what, message)
    status, _, body = post(url, jpeg)
    assert status == 200 and decode(body).shape == SIZES["car_01.jpg"]
    assert health(url)["admitted"] == 0
    assert "Traceback" not in served["main"].stderr.read_text()


def refusal(err: Exception) -> tuple[int, str, str | None]:
    """The service's answer to `err` from its table -> (status, the JSON error, Retry-After)."""
    from carvana.serve.errors import refuse

    response = asyncio.run(refuse(None, err))
    assert response.headers["content-type"] == "application/json" and list(json.loads(response.body)) == ["error"]
    return response.status_code, json.loads(response.body)["error"], response.headers.get("retry-after")


def raised(check: Callable[[], object]) -> Exception:
    from carvana.serve.errors import Refusal

    with pytest.raises(Refusal) as caught:
        check()
    return caught.value


def test_request_checks_raise_what_the_table_answers() -> None:
    """check_query, check_upload and admission are plain functions raising typed refusals, in the order the service
    runs them; ERRORS answers each with its status in one line (Busy with Retry-After); a full queue and a failed
    request leave the counts as they were."""
    from fastapi.exceptions import RequestValidationError

    from carvana.predict.segmenter import InputTooLarge
    from carvana.serve.app import Counts, admission, check_query, check_upload

    multipart, limit = "multipart/form-data; boundary=x", 8 * 100 + (1 << 20)  # max_pixels=100
    over = {"content-length": str(limit + 1), "content-type": "image/jpeg"}
    assert refusal(raised(lambda: check_query("gif", "vflip"))) == (
        400, "output=gif: choose one of png, cutout, rle", None)
    assert refusal(raised(lambda: check_query("png", "vflip"))) == (400, "tta=vflip: choose one of none, hflip", None)
    assert refusal(raised(lambda: check_upload(over, 100))) == (
        413, f"the upload is {limit + 1} bytes: more than a photo of max_pixels=100 takes", None)
    assert refusal(raised(lambda: check_upload({**over, "content-length": str(limit)}, 100))) == (
        415, "send the photo as the multipart/form-data field 'image' (curl -F image=@photo.jpg)", None)
    check_query("rle", "hflip")
    check_upload({"content-length": str(limit), "content-type": multipart}, 100)
    check_upload({"content-type": multipart}, 100)  # chunked: counted as it arrives instead
    counts = Counts(admitted=2, answered=5)
    assert refusal(raised(lambda: admission(counts, 2).__enter__())) == (
        503, "2 requests are in progress (max_queue=2): retry in 1 s", "1")
    with pytest.raises(ValueError), admission(counts, 3):
        assert counts == Counts(admitted=3, answered=5)
        raise ValueError("a failed request")
    assert counts == Counts(admitted=2, answered=5)
    assert refusal(InputTooLarge("input over\n max_input_pixels")) == (413, "input over max_input_pixels", None)
    assert refusal(CarvanaError("the ONNX file takes 64x96")) == (422, "the ONNX file takes 64x96", None)
    problem = RequestValidationError([{"loc": ("query", "output"), "msg": "Field required", "type": "missing"}])
    assert refusal(problem) == (400, "query.output: Field required", None)
    assert refusal(RuntimeError("a fault\nover two lines")) == (
        500, "internal error (RuntimeError): the service's log has the traceback", None)


def test_openapi_json_lists_the_routes_their_parameters_and_body(served: dict) -> None:
    """GET /openapi.json (no docs pages: they load their scripts from a CDN) lists the routes a 404 names, /predict's
    query parameters, its multipart body and each refusal of the table as JSON {"error"}: enough to generate a client
    or let schemathesis fuzz the service."""
    from carvana.serve.errors import ERRORS

    url = served["url"]
    status, headers, body = get(url + "/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json", body[:300]
    schema = json.loads(body)
    listed = [f"{method.upper()} {path}" for path, operations in schema["paths"].items() for method in operations]
    assert listed == ["GET /", "GET /health", "POST /predict"]
    assert json.loads(get(url + "/nope")[2])["error"] == f"no GET /nope here: the service answers {', '.join(listed)}"
    predict = schema["paths"]["/predict"]["post"]
    assert {p["name"]: (p["in"], p["schema"]["enum"]) for p in predict["parameters"]} == {
        "output": ("query", ["png", "cutout", "rle"]), "tta": ("query", ["none", "hflip"])}
    assert predict["requestBody"]["required"] and list(predict["requestBody"]["content"]) == ["multipart/form-data"]
    form = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"] == {
        "type": "string", "format": "binary", "description": "a JPEG, PNG or TIFF photo"}
    assert list(predict["responses"]["200"]["content"]) == ["image/png", "text/plain"]
    refusals = {code: answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                for code, answer in predict["responses"].items() if code != "200"}
    assert set(refusals) == {str(code) for code, _ in ERRORS.values()} - {"500"}, refusals
    assert {schema["components"]["schemas"][name]["required"][0] for name in refusals.values()} == {"error"}
    assert "Retry-After" in predict["responses"]["503"]["headers"]
    assert get(url + "/docs")[0] == get(url + "/redoc")[0] == 404


def corrupt_middle(data: bytes) -> bytes:
    """2,000 bytes in the middle of a file overwritten (seed 0), its end marker intact: the issue's photo."""
    middle = len(data) // 2
    return data[:middle] + np.random.default_rng(0).bytes(2000) + data[middle + 2000 :]


def check_corrupt_refused(url: str, data: bytes, tmp_path: Path, stderr: Path) -> None:
    """predict.py's photo check refuses the corrupt file, and the service answers it 422 in one line, libjpeg's
    warning kept out of its log."""
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(corrupt_middle(data))
    with pytest.raises(CarvanaError, match="is corrupt"):
        list(check_photos([path]))
    status, headers, body = post(url, path.read_bytes())
    assert status == 422 and headers["content-type"] == "application/json", (status, body[:300])
    message = json.loads(body)["error"]
    assert message.startswith("the photo is corrupt (Corrupt JPEG data") and "\n" not in message, message
    assert "Corrupt JPEG" not in stderr.read_text()
    assert post(url, data)[0] == 200, "the intact photo is answered"


def test_a_jpeg_corrupt_in_the_middle_is_refused_as_predict_py_refuses_it(served: dict, tmp_path: Path) -> None:
    _, data = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    check_corrupt_refused(served["url"], data.tobytes(), tmp_path, served["main"].stderr)


def test_a_real_photo_corrupt_in_the_middle_is_refused(served: dict, shared_data: Path, tmp_path: Path) -> None:
    photo = min((shared_data / "real" / "test").glob("*.jpg"))
    check_corrupt_refused(served["url"], photo.read_bytes(), tmp_path, served["main"].stderr)


def send_raw(url: str, head: bytes, body: list[bytes] | None = None, close_early: bool = False) -> bytes:
    """Send a request's head, then its body piece by piece while a thread reads the answer (the service may answer and
    close before the body ends) -> the answer's bytes; close_early: hang up after the first piece instead."""
    host, port = url.removeprefix("http://").split(":")
    answer = []
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        reader = threading.Thread(target=lambda: answer.append(read_to_end(sock)))
        reader.start()
        try:
            sock.sendall(head)
            for piece in body or []:
                sock.sendall(piece)
                if close_early:
                    sock.shutdown(socket.SHUT_RDWR)
                    break
        except OSError:
            pass  # answered and closed already
        reader.join(timeout=60)
    return answer[0]


def read_to_end(sock: socket.socket) -> bytes:
    pieces = []
    try:
        while piece := sock.recv(65536):
            pieces.append(piece)
    except OSError:
        pass  # reset after the answer: what came before it counts
    return b"".join(pieces)


def multipart_head(url: str, boundary: str, length: int | None) -> bytes:
    """The head of POST /predict, Content-Length `length`, or chunked for None."""
    size = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (f"POST /predict HTTP/1.1\r\nHost: {url.removeprefix('http://')}\r\nConnection: close\r\n{size}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()


def part_open(boundary: str) -> bytes:
    """The multipart body up to the file `image`'s first byte."""
    return f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'.encode()


def chunked(pieces: list[bytes]) -> list[bytes]:
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]


def test_a_chunked_upload_is_counted_as_it_arrives(served: dict) -> None:
    """A chunked body has no Content-Length: past the limit (21 MB at MAX_PIXELS) it is refused 413 as it arrives,
    not read whole; a chunked photo under it is answered."""
    url, boundary = served["url"], uuid.uuid4().hex
    open_ = part_open(boundary)
    close = f"\r\n--{boundary}--\r\n".encode()
    answer = send_raw(url, multipart_head(url, boundary, None), chunked([open_, *[bytes(1 << 20)] * 30, close]))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    message = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert message.startswith(f"the upload passed {8 * MAX_PIXELS + (1 << 20)} bytes"), message
    photo = (served["photos"] / "car_01.jpg").read_bytes()
    answer = send_raw(url, multipart_head(url, boundary, None), chunked([open_, photo[:1000], photo[1000:], close]))
    assert answer.startswith(b"HTTP/1.1 200") and decode(answer.partition(b"\r\n\r\n")[2]).shape == (64, 96)


def test_a_client_gone_mid_upload_is_one_log_line(served: dict) -> None:
    url, boundary, stderr = served["url"], uuid.uuid4().hex, served["main"].stderr
    before = stderr.read_text().count("disconnected before its upload ended")
    for _ in range(3):
        send_raw(url, multipart_head(url, boundary, 1 << 20), [part_open(boundary) + b"x" * 1000],
                 close_early=True)
    deadline = time.monotonic() + 30
    while stderr.read_text().count("disconnected before its upload ended") < before + 3:
        assert time.monotonic() < deadline, stderr.read_text()[-3000:]
        time.sleep(0.05)
    assert "Traceback" not in stderr.read_text() and health(url)["admitted"] == 0


def get_as(url: str, host: str, path: str = "/health") -> tuple[int, dict, bytes]:
    """GET with this Host header and an Origin of another site (what a page reached through DNS rebinding sends)."""
    request = urllib.request.Request(url + path, headers={"Host": host, "Origin": f"http://{host}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_a_host_that_does_not_name_the_service_is_refused(served: dict) -> None:
    """DNS rebinding: a page of rebind.example reaching 127.0.0.1 sends Host: rebind.example; the loopback names pass;
    no answer carries CORS headers."""
    from carvana.serve.hosts import allowed_hosts

    url = served["url"]
    port = url.rsplit(":", 1)[1]
    status, headers, body = get_as(url, f"rebind.example:{port}")
    message = json.loads(body)["error"]
    assert status == 400 and headers["content-type"] == "application/json", (status, body)
    assert message.startswith(f"Host rebind.example:{port} is not a name of this service (127.0.0.1, localhost, [::1]")
    assert "allowed_hosts=[...]" in message and "\n" not in message, message
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST"):
        status, headers, _ = get_as(url, host)
        assert status == 200 and not any(h.lower().startswith("access-control") for h in headers), (host, headers)
    assert allowed_hosts("0.0.0.0", None)[:3] == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("::1", None) == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("10.1.2.3", ["*"]) == ["*"]
    with pytest.raises(CarvanaError, match=r"allowed_hosts: ex\*ample.com is not a host name"):
        allowed_hosts("127.0.0.1", ["ex*ample.com"])


def get_raw(url: str) -> tuple[int, dict, bytes]:
    """POST /predict with the photo as the raw body, not multipart."""
    request = urllib.request.Request(f"{url}/predict", b"\xff\xd8\xff" + b"0" * 100, {"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class FailingPredictor:
    """A Segmenter stand-in whose forward raises until told otherwise: the catch-all answer, with no model at all."""

    fail = True

    def set_threads(self) -> None:
        pass

    def describe(self) -> dict:
        return {"model": "fake"}

    def inputs(self, image: np.ndarray) -> np.ndarray:
        return image

    def kind(self, size: tuple[int, int], tta: str) -> tuple:
        return size, tta, False

    def batch_limit(self, kind: tuple) -> int:
        return 4

    def forward(self, kind: tuple, items: list) -> list:
        if self.fail:
            raise RuntimeError("an unexpected fault\nover two lines")
        return [(ReadyProbs(np.full(item.shape[:2], 200, np.uint8)), 0) for item in items]


class ReadyProbs:
    def __init__(self, probs8: np.ndarray):
        self.probs8 = probs8

    def numpy(self) -> np.ndarray:
        return self.probs8[None]


def test_an_internal_error_is_a_json_500_and_the_service_goes_on(served: dict, capfd: pytest.CaptureFixture) -> None:
    predictor = FailingPredictor()
    with serving_here(compose("serve", ["ckpt=unused"]), predictor) as url:
        photo = (served["photos"] / "car_01.jpg").read_bytes()
        status, headers, body = post(url, photo)
        assert status == 500 and headers["content-type"] == "application/json", body
        assert json.loads(body) == {"error": "internal error (RuntimeError): the service's log has the traceback"}
        predictor.fail = False
        status, _, body = post(url, photo)
        assert status == 200 and (decode(body) == 200).all() and decode(body).shape == SIZES["car_01.jpg"]
    assert "RuntimeError: an unexpected fault" in capfd.readouterr().err  # the traceback stays in the service's log


def test_a_photo_past_max_input_pixels_goes_in_predict_pys_tiles(served: dict, tmp_path: Path) -> None:
    """A full-size model (input: the photo padded), max_input_pixels of 4 tiles of 64x96: a 200x300 photo (input
    224x320) gets predict.py's tile=[64,96] mask (batch_size=4 tiles a forward), not the whole one; photos of 64x96
    share a forward 4 at most; with tile=null the large photo is refused in one line."""
    from carvana.predict.segmenter import InputTooLarge, Segmenter

    ckpt = write_checkpoint(tmp_path / "full.ckpt", input_size=None)
    photos = tmp_path / "photos"
    photos.mkdir()
    yy, xx = np.mgrid[:200, :300]
    write_image(photos / "big.png", np.dstack([xx % 256, yy, (xx * yy) % 256]).astype(np.uint8))
    masks = {}
    for name, tile in (("tiled", "tile=[64,96]"), ("whole", "tile=null")):
        run = predict_here(predict_args(ckpt, tmp_path / name, f"input_dir={photos}", "trainer=cpu", tile))
        assert run.code == 0, run.err[-2000:]
        masks[name] = read_probs8(tmp_path / name / "big.png")
    assert not np.array_equal(masks["tiled"], masks["whole"])
    settings = [f"ckpt={ckpt}", "tta=none", f"max_input_pixels={4 * 64 * 96}", "tile=[64,96]"]
    predictor = Segmenter.from_serve_config(compose("serve", settings))
    assert predictor.batch_limit(predictor.kind((64, 96), "none")) == 4
    assert predictor.batch_limit(predictor.kind((64, 100), "none")) == 3  # 64x128 inputs: 3 fit
    with serving_here(compose("serve", settings), predictor) as url:
        status, _, body = post(url, (photos / "big.png").read_bytes(), filename="big.png")
        assert status == 200 and np.array_equal(decode(body), masks["tiled"])
    with pytest.raises(CarvanaError, match=r"tile=\[64, 96\] is 6144 pixels, more than max_input_pixels=6000: choose"):
        Segmenter.from_serve_config(compose("serve", [*settings[:2], "max_input_pixels=6000", settings[3]]))
    untiled = Segmenter.from_serve_config(compose("serve", [*settings[:-1], "tile=null"]))
    with pytest.raises(InputTooLarge, match=r"input is 71680 pixels, over max_input_pixels=24576, and tile=null"):
        untiled.kind((200, 300), "none")
    with serving_here(compose("serve", [*settings[:-1], "tile=null"]), untiled) as url:
        status, _, body = post(url, (photos / "big.png").read_bytes(), filename="big.png")
        assert status == 413 and b"over max_input_pixels=24576, and tile=null" in body, body


def test_batcher_groups_by_kind_within_max_batch() -> None:
    seen = []
    batcher = Batcher(lambda kind, items: seen.append((kind, list(items))) or [f"{kind}{i}" for i in items], 2, 200)
    futures = [batcher.submit(kind, i) for i, kind in enumerate("aabab")]
    batcher.start()
    assert [f.result(timeout=10) for f in futures] == ["a0", "a1", "b2", "a3", "b4"]
    batcher.stop()
    assert seen == [("a", [0, 1]), ("b", [2, 4]), ("a", [3])], seen  # oldest first, one kind a forward
    assert (batcher.forwards, batcher.photos) == (3, 5)


def test_sigterm_answers_the_request_in_flight_then_exits_0(served: dict) -> None:
    """The short service (max_queue=1, a lone photo waits 2 s for company): a second request gets 503 with
    Retry-After; SIGTERM while the first waits: it is answered whole, then the process ends with status 0."""
    service, name = served["short"], "car_01.jpg"
    data = (served["photos"] / name).read_bytes()
    answer = {}
    first = threading.Thread(target=lambda: answer.update(result=post(service.url, data, timeout=60)))
    first.start()
    deadline = time.monotonic() + 30
    while health(service.url)["waiting"] != 1:
        assert time.monotonic() < deadline, "the first request never reached the model's queue"
        time.sleep(0.02)
    status, headers, body = post(service.url, data)
    assert status == 503 and headers["retry-after"] == "1" and "max_queue=1" in json.loads(body)["error"], body
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=60) == 0, service.stderr.read_text()
    first.join(timeout=10)
    status, _, body = answer["result"]
    assert status == 200 and np.array_equal(decode(body), decode(post(served["url"], data)[2]))
    assert service.stdout.read_text().strip().splitlines()[-1] == "stopped: answered 1 requests"
    with pytest.raises(OSError):
        get(service.url + "/health", timeout=5)


def real_photo(tmp: Path) -> Path:
    """A real Kaggle photo (1918x1280) of ../shared/data, else one of that size drawn here."""
    photos = sorted((SHARED_DATA / "real" / "test").glob("*.jpg"))
    if photos:
        return photos[0]
    yy, xx = np.mgrid[:1280, :1918]
    write_image(tmp / "drawn_01.jpg", np.dstack([xx % 256, yy % 256, (xx + yy) % 256]).astype(np.uint8))
    return tmp / "drawn_01.jpg"


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install -y chromium (as .ci/run does)")
def test_page_in_chromium(served: dict, tmp_path: Path) -> None:
    """Pick a real photo on GET /: the overlay appears at the photo's size, the downloaded mask is the service's
    PNG, nothing is fetched from elsewhere (CARVANA_SERVING_CKPT, CARVANA_SERVING_SCREENSHOT: see above)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' installs playwright")
    own = Service(tmp_path / "own", Path(SCREENSHOT_CKPT)).ready() if SCREENSHOT_CKPT else None
    try:
        check_page(sync_api, own.url if own else served["url"], real_photo(tmp_path), tmp_path)
    finally:
        if own:
            own.kill()


def check_page(sync_api: object, url: str, photo: Path, tmp_path: Path) -> None:
    """test_page_in_chromium's steps and checks on the service at `url`."""
    height, width = cv2.imread(str(photo)).shape[:2]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        problems, requests = [], []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: problems.append(str(err)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(url + "/", wait_until="load")
        page.wait_for_function("document.getElementById('about').textContent.includes(', input ')")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        overlay = page.evaluate("(c => [c.width, c.height, c.getBoundingClientRect().width])"
                                "(document.getElementById('overlay'))")
        cutout = page.evaluate("(i => [i.complete, i.naturalWidth, i.naturalHeight])"
                               "(document.getElementById('cutout'))")
        status = page.text_content("#status")
        with page.expect_download() as download:
            page.click("#mask-link")
        mask_path = tmp_path / download.value.suggested_filename
        download.value.save_as(mask_path)
        shot = tmp_path / "serving.png"
        page.screenshot(path=shot, full_page=True)
        browser.close()
    assert problems == [], problems
    assert all(u.startswith((url, "blob:", "data:")) for u in requests), requests  # no CDN, nothing online
    assert overlay[:2] == [width, height] and overlay[2] > 300, overlay
    assert cutout == [True, width, height] and f"{width}x{height}" in status, (cutout, status)
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    assert mask_path.name == f"{photo.stem}_mask.png" and mask.shape == (height, width), (mask_path, mask.shape)
    # the page asks for the mask and the cut-out at once: two forwards as a rule; should they share one, it may round a
    # pixel a level apart
    diff = np.abs(mask.astype(int) - decode(post(url, photo.read_bytes())[2]).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4, (diff.max(), (diff > 0).sum())
    image = cv2.imread(str(shot))
    assert image.shape[1] == 1280 and image.shape[0] >= 800 and image.std() > 10, image.shape
    if SCREENSHOT:
        shutil.copyfile(shot, REPO / SCREENSHOT)
