"""The camera -> model -> result pipeline, with per-stage timing and the fallback chain.

For the supervisor (which runs this in a worker process)::

    cfg = load_config(Path("/data/edgekiln/pipeline.json"))   # or PipelineConfig(...)
    pipe = Pipeline(cfg)
    stats = pipe.run(stop_event, on_frame=heartbeat, on_event=forward_event)

``run`` returns when ``stop_event`` is set, when a finite source (file, folder) ends, or after
``max_frames``. It never raises for model or camera trouble: a model that fails to load or run
moves down the :class:`~appliance.inference.chain.FallbackChain` (reasons go to ``on_event``, to
the sink and to ``pipe.events``); when nothing works frames pass through in degraded mode and the
chain is retried every ``retry_s``; a live camera that is missing at start or disappears is
reopened with backoff.
Only a bad configuration or a missing local file/folder source raises (ConfigError/SourceError).

Each frame's record carries the stage timings (capture, pre, infer, post, publish) in ms and the
stages over the model's budget (scaled by ``budget_factor``, docs/decisions.md §7).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from appliance.errors import ApplianceError
from appliance.inference.backends import BackendOptions
from appliance.inference.chain import Candidate, Event, FallbackChain, Runner
from appliance.inference.errors import ConfigError, InferenceError, SourceError
from appliance.inference.sink import JsonlSink, NullSink, Sink, TeeSink
from appliance.inference.sources import Frame, LatestFrameGrabber, Source, is_live_uri, open_source
from appliance.inference.sources.frame import redact
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.mqtt_sink import MqttConfig, MqttSink

log = logging.getLogger(__name__)
STAGES = ("capture", "pre", "infer", "post", "publish")
BUDGET_EVENT_EVERY_S = 60.0


class PipelineConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Everything needed to build a pipeline (a JSON or TOML file on the data partition)."""

    model: str
    source: str
    fallback_model: str | None = None
    backends: list[str] = msgspec.field(
        default_factory=lambda: ["onnxruntime", "openvino", "opencv"]
    )
    model_file: str | None = None  # a specific file of the primary package (e.g. model_int8.tflite)
    sink: str | None = None  # JSON-lines file; None (and no mqtt) discards results
    sink_max_mb: float = 64.0  # the JSON-lines file is rotated to <sink>.1 past this size
    mqtt: MqttConfig | None = None  # publish to a broker too, buffered on data while it is down
    telemetry: TelemetryConfig | None = None  # with mqtt: windows, alerts, drift (not every frame)
    threads: int = 1
    device: str | None = None
    cache_dir: str | None = None
    budget_factor: float = 1.0
    top_k: int = 3
    max_frames: int | None = None
    retry_s: float = 30.0  # degraded mode: retry the chain this often
    reconnect_max_s: float = 30.0  # live source: backoff ceiling between reopen attempts


def load_config(path: Path) -> PipelineConfig:
    """Read a pipeline config (``.json`` or ``.toml``); errors name the file and field."""
    try:
        data = path.read_bytes()
        cfg = (msgspec.toml.decode if path.suffix == ".toml" else msgspec.json.decode)(
            data, type=PipelineConfig
        )
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        if cfg.mqtt is not None:
            cfg.mqtt.check()
        if cfg.telemetry is not None:
            cfg.telemetry.check()
    except ApplianceError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg


def make_sink(cfg: PipelineConfig) -> Sink:
    """The sinks ``cfg`` names: the JSON-lines file, MQTT (raw or telemetry), both, or none."""
    sinks: list[Sink] = []
    if cfg.sink:
        sinks.append(JsonlSink(cfg.sink, max_bytes=int(cfg.sink_max_mb * (1 << 20))))
    from appliance.telemetry.settings import effective

    # the running slot's recipe layer and the device's own layer on data (settings.py)
    try:
        mqtt, telemetry = effective(cfg.mqtt, cfg.telemetry)
    except ApplianceError as exc:
        raise ConfigError(str(exc)) from None
    if telemetry is not None:
        from appliance.telemetry.setup import telemetry_sink

        sinks.append(telemetry_sink(telemetry, mqtt, cfg.model, cfg.fallback_model))
    elif mqtt is not None:
        sinks.append(MqttSink(mqtt))
    if not sinks:
        return NullSink()
    return sinks[0] if len(sinks) == 1 else TeeSink(sinks)


def candidates(cfg: PipelineConfig) -> list[Candidate]:
    """The chain: primary on each back end, then the fallback model on each back end.

    With ``model_file`` (e.g. ``model_edgetpu.tflite``) each back end first tries that file,
    then the file it picks by itself (e.g. the CPU ``model.tflite``), never the named one again.
    """
    out: list[Candidate] = []
    for b in cfg.backends:
        if cfg.model_file is not None:
            out.append(Candidate(Path(cfg.model), b, cfg.model_file, "primary"))
        out.append(Candidate(Path(cfg.model), b, None, "primary", skip=cfg.model_file))
    if cfg.fallback_model:
        out += [Candidate(Path(cfg.fallback_model), b, None, "fallback") for b in cfg.backends]
    return out


@dataclass
class PipelineStats:
    """Counters and recent stage latencies (ms) of one run."""

    frames: int = 0
    degraded_frames: int = 0
    dropped: int = 0  # frames a live source delivered that were never processed (stale)
    source_errors: int = 0
    over_budget: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((*STAGES, "total"), 0)
    )
    ms: dict[str, deque[float]] = field(
        default_factory=lambda: {s: deque(maxlen=2048) for s in (*STAGES, "total")}
    )

    def percentile(self, stage: str, q: float) -> float:
        values = self.ms[stage]
        return float(np.percentile(np.fromiter(values, float), q)) if values else float("nan")


class Pipeline:
    """A plain object: build it from a config, then ``run(stop_event, on_frame, on_event)``."""

    def __init__(
        self, cfg: PipelineConfig, sink: Sink | None = None, source: Source | None = None
    ) -> None:
        if cfg.threads < 1 or cfg.budget_factor <= 0:
            raise ConfigError("pipeline config: threads must be >= 1 and budget_factor > 0")
        if not cfg.backends:
            raise ConfigError("pipeline config: backends: list at least one back end")
        self.cfg = cfg
        self.sink: Sink = sink or make_sink(cfg)
        self._given_source = source
        self.events: list[Event] = []
        self.stats = PipelineStats()
        self._on_event: Callable[[Event], None] | None = None
        options = BackendOptions(threads=cfg.threads, device=cfg.device, cache_dir=cfg.cache_dir)
        self.chain = FallbackChain(candidates(cfg), options, self._record_event, cfg.top_k)
        self._last_budget_event: dict[str, float] = {}
        self._limits_of: Runner | None = None
        self._limits_cache: dict[str, float] = {}
        # A refused or failing MQTT uplink becomes an event (alert when a person must act).
        sinks = self.sink.sinks if isinstance(self.sink, TeeSink) else [self.sink]
        sinks = [getattr(s, "uplink", s) for s in sinks]  # a TelemetrySink wraps the MQTT sink
        uplink = next((s for s in sinks if isinstance(s, MqttSink)), None)
        self._uplink_errors = uplink.errors if uplink is not None else None

    def _record_event(self, event: Event) -> None:
        self.events.append(event)
        self.sink.publish(event.to_json())
        if self._on_event is not None:
            self._on_event(event)

    # --- sources -------------------------------------------------------------------------

    def _open(self) -> Source:
        return (
            self._given_source if self._given_source is not None else open_source(self.cfg.source)
        )

    def _reopen(self, stop: threading.Event, reason: str) -> Source | None:
        """Reopen a live source with exponential backoff until it works or ``stop`` is set."""
        self._record_event(Event("source_lost", reason, alert=True))
        delay = 0.5
        while not stop.wait(delay):
            try:
                src = open_source(self.cfg.source)
            except SourceError as exc:
                log.warning("reopen failed: %s", exc)
                delay = min(delay * 2, self.cfg.reconnect_max_s)
                continue
            # a V4L2 camera says what it negotiated (its URI holds no credentials)
            what = getattr(src, "description", None) or redact(src.uri)
            self._record_event(Event("source_reopened", f"{what}: delivering again"))
            return src
        return None

    def _first_source(self, stop: threading.Event) -> Source | None:
        """Open the source; wait for a live one that is not there yet (no crash loop)."""
        try:
            source = self._open()
        except SourceError as exc:
            if not is_live_uri(self.cfg.source):  # a missing local file/folder: config error
                raise
            return self._reopen(stop, str(exc))
        # A camera that can say what it negotiated (V4L2: size, format, rate and what converts
        # its pixels) says so once: the results that follow come from that.
        description = getattr(source, "description", None)
        if description is not None:
            self._record_event(Event("source_opened", description))
        return source

    # --- the loop ------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event | None = None,
        on_frame: Callable[[dict[str, object]], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> PipelineStats:
        """Process frames until stopped or the source ends; never raises for model/camera faults."""
        stop = stop or threading.Event()
        self._on_event = on_event
        self.chain.next_runner()
        try:
            source = self._first_source(stop)
            if source is not None:  # None: stopped while waiting for the camera
                self._loop(source, stop, on_frame)
        finally:
            self.sink.close()
        return self.stats

    def _loop(
        self,
        source: Source,
        stop: threading.Event,
        on_frame: Callable[[dict[str, object]], None] | None,
    ) -> None:
        grabber = LatestFrameGrabber(source) if source.live else None
        retry_at = time.monotonic() + self.cfg.retry_s
        uplink_errors = self._uplink_errors
        try:
            while not stop.is_set():
                if uplink_errors:  # filled by the MQTT sink's network thread
                    message, refused = uplink_errors.popleft()
                    self._record_event(Event("uplink_error", message, alert=refused))
                if self.cfg.max_frames is not None and self.stats.frames >= self.cfg.max_frames:
                    break
                t0 = time.perf_counter()
                try:
                    frame = grabber.get() if grabber else source.read()
                except SourceError as exc:
                    self.stats.source_errors += 1
                    if grabber:
                        self.stats.dropped += grabber.dropped
                        grabber.close()
                    grabber = None
                    new = self._reopen(stop, str(exc)) if source.live else None
                    if new is None:
                        break
                    source, grabber = new, LatestFrameGrabber(new)
                    continue
                if frame is None:
                    break
                capture_ms = (time.perf_counter() - t0) * 1000 if grabber else frame.capture_ms
                if self.chain.degraded and time.monotonic() >= retry_at:
                    retry_at = time.monotonic() + self.cfg.retry_s
                    self.chain.reset()
                record = self._process(frame, capture_ms)
                if on_frame is not None:
                    on_frame(record)
        finally:
            if grabber:
                self.stats.dropped += grabber.dropped
                grabber.close()
            else:
                source.close()

    def _process(self, frame: Frame, capture_ms: float) -> dict[str, object]:
        # The per-frame path: every line here is paid on every frame, right after the model
        # has evicted the caches, where each call costs several times its warm price (see
        # tools/bench_pipeline): one dict per record, no intermediate copies.
        perf = time.perf_counter
        runner = self.chain.runner
        record: dict[str, object]
        ms: dict[str, float]
        if runner is None:
            record, ms = self._failed(frame, capture_ms, reason=self.chain.degraded_reason)
        else:
            t1 = perf()
            image, color = frame.image, frame.color
            shape = image.shape
            pre, post = runner.pre, runner.post
            try:
                # Where the runtime owns its tensors (LiteRT, OpenVINO) the pre-processor writes
                # into its input and the post-processor reads its outputs: no copy per frame.
                result, t2, t3 = runner.model.run_frame(
                    lambda out: pre(image, color, out),
                    lambda raw, box: post(raw, box, (shape[1], shape[0])),
                )
                t4 = perf()
            except InferenceError as exc:
                self.chain.next_runner(
                    f"{runner.model.describe()} failed on frame {frame.index}: {exc}"
                )
                record, ms = self._failed(frame, capture_ms, error=str(exc))
            except Exception as exc:  # e.g. a decoder bug on an odd output: fall back, do not crash
                self.chain.next_runner(
                    f"{runner.model.describe()}: unexpected {type(exc).__name__}: {exc}"
                )
                record, ms = self._failed(frame, capture_ms, error=f"{type(exc).__name__}: {exc}")
            else:
                record = {
                    "type": "result",
                    "frame": frame.index,
                    "ts": round(time.time(), 3),
                    **result,
                    **runner.identity,
                }
                ms = {
                    "capture": capture_ms,
                    "pre": (t2 - t1) * 1e3,
                    "infer": (t3 - t2) * 1e3,
                    "post": (t4 - t3) * 1e3,
                }
        if record["degraded"]:
            self.stats.degraded_frames += 1
        if runner is not self._limits_of:
            self._limits()
        limits = self._limits_cache
        over = self._over_budget(ms, limits, frame.index)
        if over:
            record["over_budget"] = over
        record["ms"] = {k: round(v, 3) for k, v in ms.items()}
        t5 = perf()
        self.sink.publish(record)
        publish = ms["publish"] = (perf() - t5) * 1e3
        total = ms["total"] = sum(ms.values())
        # publish and total are known only after the record left: stats and events only.
        if publish > limits.get("publish", math.inf) or total > limits.get("total", math.inf):
            self._over_budget({"publish": publish, "total": total}, limits, frame.index)
        self.stats.frames += 1
        recent = self.stats.ms
        for stage, value in ms.items():
            recent[stage].append(value)
        return record

    def _failed(
        self, frame: Frame, capture_ms: float, **why: object
    ) -> tuple[dict[str, object], dict[str, float]]:
        """A degraded record (no model, or it just failed) and its timings."""
        record = {"type": "result", "frame": frame.index, "ts": round(time.time(), 3)}
        record.update(degraded=True, **why)
        return record, {"capture": capture_ms}

    def _limits(self) -> dict[str, float]:
        """The current runner's budget x factor per stage (computed once per runner)."""
        runner = self.chain.runner
        if runner is not self._limits_of:
            self._limits_of = runner
            factor = self.cfg.budget_factor
            budget = runner.budget if runner is not None else {}
            self._limits_cache = {k: v * factor for k, v in budget.items()}
        return self._limits_cache

    def _over_budget(self, ms: dict[str, float], limits: dict[str, float], index: int) -> list[str]:
        """Stages of ``ms`` over their limit; counts them and raises rate-limited events."""
        over = [s for s, v in ms.items() if s in limits and v > limits[s]]
        for stage in over:
            value, limit = ms[stage], limits[stage]
            self.stats.over_budget[stage] += 1
            now = time.monotonic()
            if now - self._last_budget_event.get(stage, -1e9) >= BUDGET_EVENT_EVERY_S:
                self._last_budget_event[stage] = now
                self._record_event(
                    Event(
                        "budget_exceeded",
                        f"{stage} took {value:.1f} ms, budget {limit:.1f} ms (frame {index})",
                    )
                )
        return over
