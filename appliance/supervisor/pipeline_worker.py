"""The real worker target: the inference pipeline in the mode the supervisor asks for.

* ``primary``: the pipeline as configured (its own fallback chain handles models that fail to
  load or run; the supervisor handles processes that hang or crash);
* ``fallback``: the pipeline with the fallback model as its primary (no fallback model
  configured: the worker exits with an error, which counts as a failure);
* ``degraded``: frames pass through without a model, each record marked ``degraded``.

The worker heart-beats per frame and per pipeline event. A live camera that vanished is
reopened by the pipeline with a backoff of up to ``reconnect_max_s`` without frames, so the
supervisor's ``heartbeat_timeout_s`` must exceed it (see :func:`policy_for`).
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from appliance.supervisor.supervisor import Policy, WorkerContext, WorkerTarget

log = logging.getLogger(__name__)


def policy_for(config_path: Path, **overrides: float) -> Policy:
    """Supervision policy whose heartbeat timeout outlasts the pipeline's camera reconnects."""
    from appliance.inference.pipeline import load_config

    cfg = load_config(config_path)
    timeout = max(Policy.heartbeat_timeout_s, cfg.reconnect_max_s + 10.0)
    values: dict[str, float] = {"heartbeat_timeout_s": timeout, **overrides}
    return Policy(**values)  # type: ignore[arg-type]


def pipeline_target(config_path: Path) -> WorkerTarget:
    """A worker target that runs the pipeline configured in ``config_path``."""

    def target(ctx: WorkerContext) -> None:
        import msgspec

        from appliance.inference.pipeline import Pipeline, load_config

        cfg = load_config(config_path)
        if ctx.mode == "degraded":
            _pass_through(cfg.source, cfg.sink, ctx)
            return
        if ctx.mode == "fallback":
            if not cfg.fallback_model:
                log.error("no fallback_model in %s", config_path)
                sys.exit(2)
            cfg = msgspec.structs.replace(cfg, model=cfg.fallback_model, fallback_model=None)

        def on_event(event: object) -> None:
            ctx.heartbeat()
            to_json = getattr(event, "to_json", None)
            ctx.emit(to_json() if callable(to_json) else {"kind": str(event)})

        ctx.heartbeat()
        Pipeline(cfg).run(ctx.stop, on_frame=ctx.heartbeat, on_event=on_event)

    return target


def _pass_through(source_uri: str, sink_path: str | None, ctx: WorkerContext) -> None:
    """Degraded mode: keep the camera flowing and the records coming, without a model."""
    import time

    from appliance.inference.sink import JsonlSink, NullSink, Sink
    from appliance.inference.sources import open_source

    sink: Sink = JsonlSink(sink_path) if sink_path else NullSink()
    ctx.emit({"type": "event", "kind": "degraded", "alert": True, "reason": "no model runs"})
    source = open_source(source_uri)
    stop: threading.Event = ctx.stop
    try:
        while not stop.is_set():
            frame = source.read()
            if frame is None:
                break
            sink.publish(
                {"type": "frame", "index": frame.index, "degraded": True, "time": time.time()}
            )
            ctx.heartbeat()
    finally:
        source.close()
        sink.close()
