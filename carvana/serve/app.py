"""The service's routes: GET / (the page), GET /health, POST /predict, and GET /openapi.json (their schema: no docs
pages, which load their scripts from a CDN). The routes read app.state (cfg, predictor, batcher, checker, counts,
page, routes), which create_app fills. Photos are decoded and responses encoded in the threadpool; the forward happens
in the Batcher's one model thread. Every refusal is a class of carvana/serve/errors.py, answered JSON
{"error": "<one line>"}."""

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from carvana.data.photo_check import PhotoChecker
from carvana.model.tta import TTAS
from carvana.predict.segmenter import Segmenter
from carvana.serve.batcher import Batcher
from carvana.serve.errors import HANDLERS, BadRequest, Busy, NotMultipart, TooLarge
from carvana.serve.hosts import HostCheck, allowed_hosts
from carvana.serve.photos import OUTPUTS, decode_photo, encode, read_image_field, upload_limit

PAGE = Path(__file__).with_name("page.html")
ROUTES = "GET /, GET /health, POST /predict"  # as a 404 names them (and /openapi.json lists them: tested)
RETRY_AFTER_S = 1  # a full queue drains in about max_queue / max_batch forwards


@dataclass
class Counts:
    """The requests /health counts: `admitted` (past the checks, not yet answered) and `answered`."""

    admitted: int = 0
    answered: int = 0


def check_query(output: str, tta: str) -> None:
    """BadRequest for an output or tta the service does not know."""
    if output not in OUTPUTS:
        raise BadRequest(f"output={output}: choose one of {', '.join(OUTPUTS)}")
    if tta not in TTAS:
        raise BadRequest(f"tta={tta}: choose one of {', '.join(TTAS)}")


def check_upload(headers: Mapping[str, str], max_pixels: int) -> None:
    """From the headers alone, before the body is read: TooLarge past upload_limit, NotMultipart for another body."""
    length = headers.get("content-length", "0")
    if length.isdigit() and int(length) > upload_limit(max_pixels):
        raise TooLarge(f"the upload is {length} bytes: more than a photo of max_pixels={max_pixels} takes")
    if not headers.get("content-type", "").startswith("multipart/form-data"):
        raise NotMultipart("send the photo as the multipart/form-data field 'image' (curl -F image=@photo.jpg)")


@contextmanager
def admission(counts: Counts, max_queue: int) -> Iterator[None]:
    """One request counted in `admitted` while it runs; Busy when max_queue already are (before the body is read: a
    full service stays cheap to ask)."""
    if counts.admitted >= max_queue:
        raise Busy(f"{counts.admitted} requests are in progress (max_queue={max_queue}): retry in {RETRY_AFTER_S} s",
                   RETRY_AFTER_S)
    counts.admitted += 1
    try:
        yield
    finally:
        counts.admitted -= 1


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The model thread runs while uvicorn serves."""
    app.state.batcher.start()
    yield
    app.state.batcher.stop()  # uvicorn has answered the requests in flight by now
    app.state.checker.close()


router = APIRouter()


class ErrorBody(BaseModel):
    error: str  # one line: what is wrong and how to fix it


PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary", "description": "a JPEG, PNG or TIFF photo"}}}}}}}
PREDICT_ANSWERS = {
    200: {"description": "output=png: the 8-bit probability mask; cutout: the RGBA cut-out; rle: Kaggle's RLE",
          "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                      "text/plain": {"schema": {"type": "string"}}}},
    400: {"model": ErrorBody, "description": "an unknown output or tta; no multipart field image"},
    413: {"model": ErrorBody, "description": "an upload or photo over max_pixels; an input over max_input_pixels"},
    415: {"model": ErrorBody, "description": "a body that is not multipart/form-data"},
    422: {"model": ErrorBody, "description": "not a whole, readable photo; a photo the model does not take"},
    503: {"model": ErrorBody, "description": "max_queue requests in progress",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
}


@router.get("/", response_class=HTMLResponse)
async def page(request: Request) -> HTMLResponse:
    """The page: pick a photo, see its mask and cut-out."""
    return HTMLResponse(request.app.state.page)


@router.get("/health")
async def health(request: Request) -> dict:
    """The model, its settings and the request counts."""
    state = request.app.state
    cfg, counts, batcher = state.cfg, state.counts, state.batcher
    return {"status": "ok", **state.predictor.describe(), "tta": cfg["tta"], "threshold": cfg["threshold"],
            "max_batch": cfg["max_batch"], "admitted": counts.admitted, "waiting": batcher.waiting,
            "answered": counts.answered, "forwards": batcher.forwards, "photos": batcher.photos}


@router.post("/predict", response_class=Response, responses=PREDICT_ANSWERS, openapi_extra=PREDICT_BODY)
async def predict(request: Request,
                  output: str = Query("png", json_schema_extra={"enum": list(OUTPUTS)}),
                  tta: str | None = Query(None, description="without it: the service's tta",
                                          json_schema_extra={"enum": list(TTAS)})) -> Response:
    """The mask of the multipart file `image`, as predict.py writes it (output=png, cutout or rle)."""
    state = request.app.state
    cfg = state.cfg
    tta = cfg["tta"] if tta is None else tta
    check_query(output, tta)
    check_upload(request.headers, cfg["max_pixels"])
    with admission(state.counts, cfg["max_queue"]):
        data = await read_image_field(request, cfg["max_pixels"])
        body = await segment(state, data, output, tta)
        state.counts.answered += 1
    return Response(body, media_type=OUTPUTS[output])


async def segment(state: State, data: bytes, output: str, tta: str) -> bytes:
    """A photo's bytes -> the response's bytes: decoded and encoded in the threadpool, the forward in the batcher's."""
    cfg, predictor = state.cfg, state.predictor
    image = await run_in_threadpool(decode_photo, data, cfg["max_pixels"], state.checker)
    inputs = await run_in_threadpool(predictor.inputs, image)  # resized or padded: the network's input
    kind = predictor.kind(image.shape[:2], tta)  # tiled past max_input_pixels
    probs8, index = await asyncio.wrap_future(state.batcher.submit(kind, inputs))
    # probs8.numpy() waits for a GPU's copy to land: in the threadpool too
    return await run_in_threadpool(lambda: encode(output, image, probs8.numpy()[index], cfg["threshold"],
                                                  cfg["cutout_alpha"], cfg["cutout_colour"]))


def create_app(cfg: dict, predictor: Segmenter) -> FastAPI:
    """The FastAPI app of conf/serve.yaml's settings around a loaded Segmenter; its lifespan runs the model thread."""
    app = FastAPI(title="carvana", lifespan=lifespan, exception_handlers=HANDLERS, docs_url=None, redoc_url=None)
    app.include_router(router)
    app.state.cfg, app.state.predictor, app.state.counts = cfg, predictor, Counts()
    app.state.batcher = Batcher(predictor.forward, cfg["max_batch"], cfg["max_wait_ms"], setup=predictor.set_threads,
                                limit=predictor.batch_limit)
    app.state.checker, app.state.page, app.state.routes = PhotoChecker(), PAGE.read_text(), ROUTES
    # the Host must name the service (DNS rebinding); no CORS middleware: other sites' pages cannot read its answers
    app.add_middleware(HostCheck, allowed_hosts=allowed_hosts(cfg["host"], cfg["allowed_hosts"]))
    return app
