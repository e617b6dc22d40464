"""Running the web app under uvicorn until Ctrl+C, and stopping it in a known time.

Ctrl+C closes the listening socket at once and gives the photos in flight `grace_s` seconds to be answered
(`crackseg serve`: `cli.serve.SHUTDOWN_GRACE_S`); then the requests still running are cancelled, which stops their
segmentation within a batch of tiles (`routes.analysed`), and the process exits 0. A second Ctrl+C stops without
waiting (exit status 130).
"""

from __future__ import annotations

import sys

import uvicorn

INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl+C


class Server(uvicorn.Server):
    """uvicorn's server, which also shuts the app down (its workers told to stop) after a second Ctrl+C: uvicorn
    skips that step then, and the app would be torn down mid-wait, with a traceback."""

    async def shutdown(self, sockets=None) -> None:
        await super().shutdown(sockets)
        if not self.lifespan.shutdown_event.is_set():
            await self.lifespan.shutdown()


def run_server(app, host: str, port: int, grace_s: float) -> int:
    """Serve `app` on host:port until Ctrl+C; the exit status: 0 after a graceful stop, 130 after a second Ctrl+C."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", lifespan="on", timeout_graceful_shutdown=grace_s
    )
    server = Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises the Ctrl+C it held back once the server has stopped
        pass
    if server.force_exit:
        print("stopped at a second Ctrl+C, without waiting for the photos in flight", file=sys.stderr)
        return INTERRUPTED
    return 0
