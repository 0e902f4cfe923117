"""The service's routes: GET / (the page), GET /health, POST /predict. Photos are decoded and responses encoded in
the threadpool; the forward happens in the Batcher's one model thread. Every error is JSON {"error": "<one line>"}."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from carvana import CarvanaError
from carvana.data.photo_check import PhotoChecker
from carvana.model.tta import TTAS
from carvana.predict.segmenter import InputTooLarge, Segmenter
from carvana.serve.batcher import Batcher
from carvana.serve.hosts import HostCheck, allowed_hosts
from carvana.serve.photos import OUTPUTS, PhotoError, decode_photo, encode

PAGE = Path(__file__).with_name("page.html")
ROUTES = "GET /, GET /health, POST /predict"
RETRY_AFTER_S = 1  # a full queue drains in about max_queue / max_batch forwards
LOG = logging.getLogger("uvicorn.error")  # uvicorn's own: its format, its log_level


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The one error body of the service."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def upload_limit(max_pixels: int) -> int:
    """Bytes above which an upload cannot be a photo of max_pixels (8 bytes a pixel: 16-bit RGBA, uncompressed)."""
    return 8 * max_pixels + (1 << 20)


def count_bytes(receive: Receive, limit: int, max_pixels: int) -> Receive:
    """`receive` whose body past `limit` bytes is PhotoError 413, counted as it arrives: a chunked upload has no
    Content-Length to refuse it by."""
    total = 0

    async def receive_counted() -> Message:
        nonlocal total
        message = await receive()
        total += len(message.get("body", b""))
        if total > limit:
            raise PhotoError(413, f"the upload passed {limit} bytes: more than a photo of max_pixels={max_pixels} "
                                  "takes; send the photo alone, smaller")
        return message

    return receive_counted


async def read_image_field(request: Request, max_pixels: int) -> bytes:
    """The bytes of the multipart file `image`, at most upload_limit(max_pixels) of body read (PhotoError 413 past it,
    400 without the field)."""
    counted = Request(request.scope, count_bytes(request.receive, upload_limit(max_pixels), max_pixels))
    async with counted.form(max_files=1, max_fields=8) as form:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise PhotoError(400, "no file in the multipart field 'image': send the photo as -F image=@photo.jpg")
        return await upload.read()


def create_app(cfg: dict, predictor: Segmenter) -> FastAPI:
    """The FastAPI app of conf/serve.yaml's settings around a loaded Segmenter; its lifespan runs the model thread."""
    batcher = Batcher(predictor.forward, cfg["max_batch"], cfg["max_wait_ms"], setup=predictor.set_threads,
                      limit=predictor.batch_limit)
    checker = PhotoChecker()
    page = PAGE.read_text()
    state = {"admitted": 0, "answered": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.stop()  # uvicorn has answered the requests in flight by now
        checker.close()

    # no /docs: FastAPI's pages load their scripts from a CDN
    app = FastAPI(title="carvana", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.counts = state
    # the Host must name the service (DNS rebinding); no CORS middleware: other sites' pages cannot read its answers
    app.add_middleware(HostCheck, allowed_hosts=allowed_hosts(cfg["host"], cfg["allowed_hosts"]))

    @app.exception_handler(PhotoError)
    async def photo_error(request: Request, err: PhotoError) -> JSONResponse:
        return error(err.status, str(err))

    @app.exception_handler(InputTooLarge)
    async def too_large(request: Request, err: InputTooLarge) -> JSONResponse:
        return error(413, str(err))  # its network input is over max_input_pixels, and it cannot be tiled

    @app.exception_handler(CarvanaError)
    async def carvana_error(request: Request, err: CarvanaError) -> JSONResponse:
        return error(422, str(err))  # the photo does not fit the model (e.g. an ONNX file's fixed size)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if err.status_code in (404, 405):
            return error(err.status_code, f"no {request.method} {request.url.path} here: the service answers {ROUTES}",
                         err.headers)
        return error(err.status_code, err.detail, err.headers)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, err: ClientDisconnect) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        LOG.info("%s disconnected before its upload ended: not answered", client)  # nothing to fix here
        return Response(status_code=400)  # uvicorn sends nothing to a gone client

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        return error(400, f"{'.'.join(map(str, first['loc']))}: {first['msg']}")

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        # uvicorn logs the traceback after this answer (Starlette re-raises to the server); the client gets one line
        return error(500, f"internal error ({type(err).__name__}): the service's log has the traceback")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **predictor.describe(), "tta": cfg["tta"], "threshold": cfg["threshold"],
                "max_batch": cfg["max_batch"], "admitted": state["admitted"], "waiting": batcher.waiting,
                "answered": state["answered"], "forwards": batcher.forwards, "photos": batcher.photos}

    @app.post("/predict")
    async def predict(request: Request, output: str = "png", tta: str | None = None) -> Response:
        tta = cfg["tta"] if tta is None else tta
        if output not in OUTPUTS:
            return error(400, f"output={output}: choose one of {', '.join(OUTPUTS)}")
        if tta not in TTAS:
            return error(400, f"tta={tta}: choose one of {', '.join(TTAS)}")
        length = request.headers.get("content-length", "0")
        if length.isdigit() and int(length) > upload_limit(cfg["max_pixels"]):
            return error(413, f"the upload is {length} bytes: more than a photo of max_pixels={cfg['max_pixels']} "
                              "takes")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, "send the photo as the multipart/form-data field 'image' (curl -F image=@photo.jpg)")
        if state["admitted"] >= cfg["max_queue"]:  # before the body is read: a full service stays cheap to ask
            return error(503, f"{state['admitted']} requests are in progress (max_queue={cfg['max_queue']}): retry "
                              f"in {RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)})
        state["admitted"] += 1
        try:
            data = await read_image_field(request, cfg["max_pixels"])
            image = await run_in_threadpool(decode_photo, data, cfg["max_pixels"], checker)
            inputs = await run_in_threadpool(predictor.inputs, image)  # resized or padded: the network's input
            kind = predictor.kind(image.shape[:2], tta)  # tiled past max_input_pixels
            probs8, index = await asyncio.wrap_future(batcher.submit(kind, inputs))
            body = await run_in_threadpool(lambda: encode(output, image, probs8.numpy()[index], cfg["threshold"],
                                                          cfg["cutout_alpha"], cfg["cutout_colour"]))
            state["answered"] += 1
            return Response(body, media_type=OUTPUTS[output])
        finally:
            state["admitted"] -= 1

    return app
