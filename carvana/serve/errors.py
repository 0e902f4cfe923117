"""The service's refusals: each a class, its status in one table (ERRORS), every answer JSON {"error": "<one line>"}.
create_app registers HANDLERS; a check raises the class that says what is wrong, and the table answers it."""

import logging
from collections.abc import Callable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from carvana import CarvanaError
from carvana.predict.segmenter import InputTooLarge

LOG = logging.getLogger("uvicorn.error")  # uvicorn's own: its format, its log_level


class Refusal(Exception):
    """A request the service refuses, in a one-line message; its status is its class's in ERRORS."""

    headers: dict[str, str] | None = None


class BadRequest(Refusal):
    """400: an unknown query value, no multipart field `image`."""


class TooLarge(Refusal):
    """413: an upload or a photo over max_pixels."""


class NotMultipart(Refusal):
    """415: a body that is not multipart/form-data."""


class NotAPhoto(Refusal):
    """422: an upload that is not a whole, readable photo."""


class Busy(Refusal):
    """503: max_queue requests in progress; Retry-After says when to ask again."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


def first_problem(err: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: the first one's place and message."""
    first = err.errors()[0]
    return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"


def internal(err: Exception) -> str:
    # uvicorn logs the traceback after this answer (Starlette re-raises to the server); the client gets one line
    return f"internal error ({type(err).__name__}): the service's log has the traceback"


# exception class -> (status, its message); an exception takes the entry of its nearest class (its MRO)
ERRORS: dict[type[Exception], tuple[int, Callable]] = {
    BadRequest: (400, str),
    RequestValidationError: (400, first_problem),
    TooLarge: (413, str),
    InputTooLarge: (413, str),  # its network input is over max_input_pixels, and it cannot be tiled
    NotMultipart: (415, str),
    NotAPhoto: (422, str),
    CarvanaError: (422, str),  # the photo does not fit the model (e.g. an ONNX file's fixed size)
    Busy: (503, str),
    Exception: (500, internal),
}


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The one error body of the service."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


async def refuse(request: Request, err: Exception) -> JSONResponse:
    """The answer ERRORS gives `err`."""
    status, message = next(ERRORS[cls] for cls in type(err).__mro__ if cls in ERRORS)
    return error(status, message(err), err.headers if isinstance(err, Refusal) else None)


async def http_error(request: Request, err: HTTPException) -> JSONResponse:
    """Starlette's own refusals (an unknown path or method, a malformed multipart body) in the service's body."""
    if err.status_code in (404, 405):
        return error(err.status_code, f"no {request.method} {request.url.path} here: the service answers "
                                      f"{request.app.state.routes}", err.headers)
    return error(err.status_code, err.detail, err.headers)


async def gone(request: Request, err: ClientDisconnect) -> Response:
    """A client that hung up mid-upload: one log line, nothing to fix."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    LOG.info("%s disconnected before its upload ended: not answered", client)
    return Response(status_code=400)  # uvicorn sends nothing to a gone client


HANDLERS: dict[type[Exception], Callable] = {**dict.fromkeys(ERRORS, refuse), HTTPException: http_error,
                                             ClientDisconnect: gone}
