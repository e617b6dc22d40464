"""`crackseg serve`: the web page and HTTP API on this machine."""

from __future__ import annotations

import argparse
import math
import sys

from crackseg.cli.common import add_model_arguments, positive_int, segmenter_from_args

SERVER_MAX_PIXELS = 100e6  # per-request memory: a web server refuses huge photos sooner than the command line
SERVER_LIMIT_HELP = (
    f"the photo limit (default for the server: {SERVER_MAX_PIXELS / 1e6:.0f} MP): a larger upload is refused (413)"
)

BODY_TIMEOUT_S = 60  # the longest pause in an upload before it is dropped, as web servers' client-body timeouts
SHUTDOWN_GRACE_S = 10  # seconds the photos in flight get to finish after Ctrl+C
CTRL_C_HELP = f"Ctrl+C stops: photos in flight get {SHUTDOWN_GRACE_S} s to finish; a second Ctrl+C stops at once"


def cmd_serve(args) -> int:
    from crackseg.serve import create_app
    from crackseg.serve.security import is_loopback
    from crackseg.serve.server import run_server

    segmenter = segmenter_from_args(args)
    app = create_app(
        segmenter,
        max_upload_mb=args.max_upload_mb,
        max_pixels=segmenter.max_pixels,
        workers=args.workers,
        result_ttl_s=args.result_ttl,
        host=args.host,
        body_timeout_s=args.body_timeout,
    )
    print(f"{args.workers} inference worker(s)", file=sys.stderr)
    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine on port {args.port} can "
            "upload photos (there is no login); use the default --host 127.0.0.1 to keep it local",
            file=sys.stderr,
        )
    url = f"http://{args.host}:{args.port}/"
    print(f"crackseg serving on {url}  (API description at {url}openapi.json; {CTRL_C_HELP})", file=sys.stderr)
    return run_server(app, args.host, args.port, grace_s=SHUTDOWN_GRACE_S)


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


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="web page and HTTP API: upload a photo, see and download its cracks",
        description=f"Serve the web page and HTTP API on this machine. {CTRL_C_HELP}.",
    )
    add_model_arguments(p, described={"max_pixels": SERVER_LIMIT_HELP})
    p.set_defaults(max_pixels=SERVER_MAX_PIXELS)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port_number, default=8000, help="1-65535 (default: 8000)")
    p.add_argument("--max-upload-mb", type=positive_mb, default=50, help="refuse larger uploads (413)")
    p.add_argument("--workers", type=positive_int, default=2, help="photos segmented at once (one shared model)")
    p.add_argument("--result-ttl", type=float, default=900, help="seconds a result can be fetched")
    p.add_argument(
        "--body-timeout",
        type=positive_seconds,
        default=BODY_TIMEOUT_S,
        help=f"an upload that sends nothing for this many seconds is dropped (408) (default: {BODY_TIMEOUT_S})",
    )
    p.set_defaults(func=cmd_serve)
