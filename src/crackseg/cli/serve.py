"""`crackseg serve`: the web page and HTTP API on this machine."""

from __future__ import annotations

import sys

from crackseg.cli.common import add_model_arguments, positive_int, segmenter_from_args

SERVER_MAX_PIXELS = 100e6  # per-request memory: a web server refuses huge photos sooner than the command line
SERVER_LIMIT_HELP = (
    f"the photo limit (default for the server: {SERVER_MAX_PIXELS / 1e6:.0f} MP): a larger upload is refused (413)"
)


def cmd_serve(args) -> int:
    import uvicorn

    from crackseg.serve import create_app
    from crackseg.serve.security import is_loopback

    segmenter = segmenter_from_args(args)
    app = create_app(
        segmenter,
        max_upload_mb=args.max_upload_mb,
        max_pixels=segmenter.max_pixels,
        workers=args.workers,
        result_ttl_s=args.result_ttl,
        host=args.host,
    )
    print(f"{args.workers} inference worker(s)", file=sys.stderr)
    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine on port {args.port} can "
            "upload photos (there is no login); use the default --host 127.0.0.1 to keep it local",
            file=sys.stderr,
        )
    url = f"http://{args.host}:{args.port}/"
    print(f"crackseg serving on {url}  (API description at {url}openapi.json; Ctrl+C stops)", file=sys.stderr)
    # Ctrl+C: in-flight photos get 10 s to finish, then the server stops even with a queue waiting.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=10)
    return 0


def port_number(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError(text)
    return value


def positive_mb(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="web page and HTTP API: upload a photo, see and download its cracks")
    add_model_arguments(p, described={"max_pixels": SERVER_LIMIT_HELP})
    p.set_defaults(max_pixels=SERVER_MAX_PIXELS)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port_number, default=8000, help="1-65535 (default: 8000)")
    p.add_argument("--max-upload-mb", type=positive_mb, default=50, help="refuse larger uploads (413)")
    p.add_argument("--workers", type=positive_int, default=2, help="photos segmented at once (one shared model)")
    p.add_argument("--result-ttl", type=float, default=900, help="seconds a result can be fetched")
    p.set_defaults(func=cmd_serve)
