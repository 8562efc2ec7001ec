"""uvicorn stopped the way `docker stop` and Kubernetes stop a container.

They send SIGTERM, wait a grace period (Docker: 10 s) and then kill. Plain uvicorn closes
its listening socket at once (a new request is refused without an answer), waits for the
requests in flight as long as they take, and re-raises the signal at the end, so the process
exits 143. Here the first SIGTERM (or SIGINT) drains the engine instead (`Engine.drain`:
readiness and new requests get 503 + Retry-After, accepted requests are finished while the
drain timeout lasts, the rest get 503), then uvicorn shuts down and the process exits 0.
A second signal stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import uvicorn

log = logging.getLogger("qgn.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_timeout_s: float):
        super().__init__(config)
        self.drain_timeout_s = drain_timeout_s
        self._drain: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        engine = getattr(self.config.app.state, "engine", None)
        if self._drain is None and engine is not None and not self.should_exit:
            log.info("%s: draining for up to %g s", signal.Signals(sig).name, self.drain_timeout_s)
            self._drain = threading.Thread(
                target=self._drain_then_stop, args=(engine,), name="qgn-drain", daemon=True
            )
            self._drain.start()
            return
        # Nothing to drain, or a second signal: stop now (twice SIGINT: without waiting).
        self.force_exit = self.should_exit and sig == signal.SIGINT
        self.should_exit = True

    def _drain_then_stop(self, engine) -> None:
        engine.drain(self.drain_timeout_s)
        self.should_exit = True
