"""The real worker target: the inference pipeline in the mode the supervisor asks for.

* ``primary``: the pipeline as configured (its own fallback chain handles models that fail to
  load or run; the supervisor handles processes that hang or crash);
* ``fallback``: the pipeline with the fallback model as its primary (no fallback model
  configured: the worker exits with an error, which counts as a failure);
* ``degraded``: frames pass through without a model, each record marked ``degraded``.

The worker heart-beats per frame and per pipeline event, while the pipeline waits for a
lost camera, and while it starts up and is busy (:class:`OutageBeat`), so the supervisor's hang
timeout can stay well inside the systemd watchdog period (:func:`policy_for`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.inference.errors import SourceError
from appliance.supervisor.supervisor import Policy, WorkerContext, WorkerTarget

if TYPE_CHECKING:
    from appliance.inference.pipeline import PipelineConfig

log = logging.getLogger(__name__)


def policy_for(watchdog_s: float | None = None, **overrides: float) -> Policy:
    """Supervision policy whose hang detection fits inside systemd's watchdog period.

    ``watchdog_s`` is the service's WatchdogSec (``Notifier().watchdog_s``): a hung worker is
    killed after at most half of it, so it is replaced well within the watchdog period.
    """
    timeout = Policy.heartbeat_timeout_s
    if watchdog_s:
        timeout = min(timeout, watchdog_s / 2)
    values: dict[str, float] = {"heartbeat_timeout_s": timeout, **overrides}
    return Policy(**values)  # type: ignore[arg-type]


class OutageBeat:
    """Heart-beat while the pipeline waits for a lost camera, so an outage is not a hang; and
    while it starts up busy, so a slow model load is not one either.

    The pipeline reports ``source_lost`` and ``source_reopened`` events and retries the camera
    with a backoff of up to ``reconnect_max_s`` without delivering frames. Between those events
    (or until a frame arrives) a helper thread beats once a second, for at most
    ``max_outage_s``.

    Until the first frame (at most ``max_start_s``) it also beats in each second in which the
    worker used a quarter of a CPU or more (``busy_fraction``; the sink's flusher and this
    thread use far less while the worker is blocked): loading the model and opening the
    camera is work, not a hang. OpenVINO's import and model compilation took 10-17 s in a
    worker under QEMU TCG on a loaded host, more than the 15 s hang timeout, and the worker was
    killed over and over. A worker blocked before its first frame (a model file that never
    arrives, a stuck read) uses no CPU: it still goes silent and is killed after the timeout,
    as is a worker stuck anywhere after its first frame.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        max_outage_s: float = 1800.0,
        every_s: float = 1.0,
        max_start_s: float = 120.0,
        busy_fraction: float = 0.25,
    ):
        self.ctx = ctx
        self.max_outage_s = max_outage_s
        self.every_s = every_s
        self.busy_fraction = busy_fraction
        self._since: float | None = None
        self._starting_until: float | None = time.monotonic() + max_start_s
        self._thread = threading.Thread(target=self._loop, name="outage-beat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        cpu = time.process_time()  # every thread of the worker (OpenVINO compiles in its own)
        while not self.ctx.stop.wait(self.every_s):
            used, cpu = -cpu, time.process_time()
            used += cpu
            now = time.monotonic()
            since, starting = self._since, self._starting_until
            waiting = since is not None and now - since < self.max_outage_s
            busy = used >= self.every_s * self.busy_fraction
            if waiting or (starting is not None and now < starting and busy):
                self.ctx.heartbeat()

    def frame(self, *_: object) -> None:
        self._since = self._starting_until = None
        self.ctx.heartbeat()

    def event(self, kind: str) -> None:
        self.ctx.heartbeat()
        if kind == "source_lost":
            self._since = time.monotonic()
        elif kind == "source_reopened":
            self._since = None


def pipeline_target(config_path: Path) -> WorkerTarget:
    """A worker target that runs the pipeline configured in ``config_path``."""

    def target(ctx: WorkerContext) -> None:
        import msgspec

        from appliance.inference.pipeline import Pipeline, load_config

        cfg = load_config(config_path)
        if ctx.mode == "degraded":
            _pass_through(cfg, ctx)
            return
        if ctx.mode == "fallback":
            if not cfg.fallback_model:
                log.error("no fallback_model in %s", config_path)
                sys.exit(2)
            cfg = msgspec.structs.replace(cfg, model=cfg.fallback_model, fallback_model=None)

        outage = OutageBeat(ctx)

        def on_event(event: object) -> None:
            outage.event(str(getattr(event, "kind", "")))
            to_json = getattr(event, "to_json", None)
            ctx.emit(to_json() if callable(to_json) else {"kind": str(event)})

        ctx.heartbeat()
        Pipeline(cfg).run(ctx.stop, on_frame=outage.frame, on_event=on_event)

    return target


def _pass_through(cfg: PipelineConfig, ctx: WorkerContext) -> None:
    """Degraded mode: keep the camera flowing and the records coming, without a model."""
    from appliance.inference.pipeline import make_sink
    from appliance.inference.sink import JsonlSink, NullSink, Sink
    from appliance.inference.sources import open_source

    try:
        sink: Sink = make_sink(cfg)  # the same sinks as the pipeline: file, MQTT or both
    except Exception as exc:  # the last mode must not crash-loop on its uplink
        log.error("degraded mode: configured sinks unusable (%s); file sink only", exc)
        ctx.emit({"type": "event", "kind": "sink_unavailable", "alert": True, "reason": str(exc)})
        sink = JsonlSink(cfg.sink) if cfg.sink else NullSink()
    ctx.emit({"type": "event", "kind": "degraded", "alert": True, "reason": "no model runs"})
    stop: threading.Event = ctx.stop
    failures = 0
    try:
        while not stop.is_set():
            try:  # a camera that cannot open or stops is waited for, never a crash loop
                source = open_source(cfg.source)
            except SourceError as exc:
                failures += 1
                _source_lost(ctx, exc, min(2.0**failures, cfg.reconnect_max_s))
                continue
            failures = 0
            try:
                while not stop.is_set():
                    frame = source.read()
                    if frame is None:
                        return
                    sink.publish(
                        {
                            "type": "frame",
                            "index": frame.index,
                            "degraded": True,
                            "time": time.time(),
                        }
                    )
                    ctx.heartbeat()
            except SourceError as exc:
                _source_lost(ctx, exc, 1.0)
            finally:
                source.close()
    finally:
        sink.close()


def _source_lost(ctx: WorkerContext, exc: SourceError, wait_s: float) -> None:
    """Report a camera that cannot be read; wait ``wait_s`` before the next try, beating."""
    log.error("degraded mode: %s", exc)
    ctx.emit({"type": "event", "kind": "source_lost", "alert": True, "reason": str(exc)})
    deadline = time.monotonic() + wait_s
    while not ctx.stop.is_set():  # an outage is not a hang: keep the heartbeat going
        ctx.heartbeat()
        left = deadline - time.monotonic()
        if left <= 0 or ctx.stop.wait(min(left, 1.0)):
            return
