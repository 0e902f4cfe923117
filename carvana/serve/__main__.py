"""python -m carvana.serve ckpt=PATH [host= port= ...]: the HTTP service of conf/serve.yaml (--help lists the keys).
SIGTERM or Ctrl-C: the requests in flight are answered, then the process ends with status 0."""

import signal
import socket
import sys

from carvana import CarvanaError
from carvana.cli import check_at_least, compose, run_or_exit

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def check_settings(cfg: dict) -> None:
    """The keys checked before anything is loaded."""
    if not cfg["ckpt"]:
        raise CarvanaError("ckpt= is required: python -m carvana.serve ckpt=last.ckpt (a glob or a list [A, B] for an "
                           "ensemble, or a .onnx file)")
    check_at_least(cfg, {"max_batch": 1, "max_wait_ms": 0, "max_queue": 1, "max_pixels": 1, "max_input_pixels": 1,
                         "port": 0, "threads": 1}, nullable=("threads",))
    if cfg["port"] > 65535:
        raise CarvanaError(f"port={cfg['port']} must be at most 65535 (port=0: any free one)")
    if cfg["log_level"] not in LOG_LEVELS:
        raise CarvanaError(f"log_level={cfg['log_level']}: choose one of {', '.join(LOG_LEVELS)}")


def import_server() -> None:
    """The [serve] extra's packages, or the install hint."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise CarvanaError(f"the service needs the serve extra ({err.name} is missing): pip install -e '.[serve]'") \
            from None


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), before the model loads: a taken port fails at once."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise CarvanaError(f"host={host} is not an address ({err.strerror}): e.g. host=127.0.0.1 or host=0.0.0.0") \
            from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise CarvanaError(f"cannot listen on {host}:{port} ({err.strerror}): choose another port= (port=0: any free "
                           "one) or host=") from None
    return sock


def main(argv: list[str] | None = None) -> None:
    """Load the models, print the address, serve until SIGTERM or Ctrl-C; expected errors: one line, exit status 2."""
    def work(words: list[str]) -> tuple:
        cfg = compose("serve", words)
        check_settings(cfg)
        import_server()
        from carvana.serve.hosts import allowed_hosts

        allowed_hosts(cfg["host"], cfg["allowed_hosts"])  # checked before the model loads
        sock = listen(cfg["host"], cfg["port"])
        from carvana.predict.segmenter import Segmenter

        predictor = Segmenter.from_serve_config(cfg)
        predictor.warm_up()
        return cfg, sock, predictor

    cfg, sock, predictor = run_or_exit(sys.argv[1:] if argv is None else argv, "serve", work)
    import uvicorn

    from carvana.serve.app import create_app

    app = create_app(cfg, predictor)
    about = predictor.describe()
    host, port = sock.getsockname()[:2]
    print(f"serving {about['model']} ({', '.join(about['checkpoints'])}; {about['device']}) on http://{host}:{port} "
          "(GET / the page, GET /health, POST /predict)", flush=True)
    # uvicorn takes SIGTERM and SIGINT while it serves, answers the requests in flight, then raises the signal again
    # under the handler it found: this one, so the process ends with status 0 instead of being killed by it
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: None)
    server = uvicorn.Server(uvicorn.Config(app, log_level=cfg["log_level"], timeout_graceful_shutdown=None))
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(1)  # uvicorn logged why
    print(f"stopped: answered {app.state.counts.answered} requests", flush=True)


if __name__ == "__main__":
    main()
