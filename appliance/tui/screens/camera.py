"""3 Camera: V4L2 devices and the configured stream; test-capture, check, select and save."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import msgspec
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from appliance.device import Device
from appliance.errors import ApplianceError
from appliance.fsutil import atomic_write_bytes
from appliance.tui import camcheck
from appliance.tui.base import TaskScreen
from appliance.tui.camcheck import CaptureReport
from appliance.tui.devstatus import pipeline_settings


def source_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be a camera source, or None."""
    from appliance.inference.sources import STREAM_SCHEMES

    uri = uri.strip()
    if not uri:
        return "enter a device (/dev/video0), a stream URL or a video file"
    scheme = urlsplit(uri).scheme
    if scheme in (*STREAM_SCHEMES, "v4l2"):
        return None
    if scheme == "npz":  # a test-pattern camera (QEMU test profile, the demo)
        path = Path(uri[4:].split("?", 1)[0])
    else:
        path = Path(urlsplit(uri).path if scheme == "file" else uri.split("?", 1)[0])
    if scheme and scheme not in ("file", "npz"):
        return f"unknown scheme {scheme}:// (use v4l2, rtsp, http(s), udp, tcp or a file)"
    if not path.exists():
        return f"{path} does not exist"
    return None


class CameraScreen(TaskScreen):
    """Type or pick a source, Enter tests it (frames, resolution, FPS, light, focus), s saves."""

    MODE = "camera"
    AUTO_FOCUS = "#sources"  # an option list: digits still switch tasks
    CSS_PATH = Path(__file__).with_suffix(".tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "test", "Test"),
        Binding("s", "save", "Save"),
    ]

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self._tested: CaptureReport | None = None

    def compose_body(self) -> ComposeResult:
        devices = camcheck.list_v4l2(self.device.sys_root)
        configured = str(pipeline_settings(self.device).get("source", ""))
        self._choices = [d.path for d in devices]
        options = [Option(f"{d.path}  V4L2: {d.name}", id=d.path) for d in devices]
        if configured and configured not in self._choices:
            self._choices.append(configured)
            options.append(Option(f"{configured}  (configured)", id=configured))
        if not devices:
            options.append(Option("no V4L2 camera found (/sys/class/video4linux)", disabled=True))
        yield Static("Camera: Enter on a source tests it", classes="title")
        yield OptionList(*options, id="sources", compact=True)
        yield Static(f"configured: {configured or '-'}", id="configured", markup=False)
        with Horizontal(classes="form-row"):
            yield Label("Source")
            yield Input(value=configured, id="source", compact=True)
        yield Static("", id="source-error", classes="error", markup=False)
        with Horizontal(classes="buttons"):
            yield Button("Test (t)", id="test", compact=True)
            yield Button("Save (s)", id="save", compact=True)
        with Horizontal(id="result-row"):
            yield Static("", id="preview", markup=False)
            yield Static("no test capture yet", id="result", markup=False)
        yield Static("", id="message", classes="message", markup=False)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self.query_one("#source", Input).value = event.option.id
            self.action_test()

    def _uri(self) -> str:
        return self.query_one("#source", Input).value.strip()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_test()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "test":
            self.action_test()
        elif event.button.id == "save":
            self.action_save()

    def action_test(self) -> None:
        uri = self._uri()
        problem = source_problem(uri)
        self.show_error("source", problem)
        if problem:
            self.say("not tested: fix the source")
            return
        self.say(f"capturing from {uri} ...")
        self._capture(uri)

    @work(thread=True, exclusive=True, group="camera")
    def _capture(self, uri: str) -> None:
        try:
            report = camcheck.capture_check(uri)
        except ApplianceError as exc:
            self.app.call_from_thread(self._failed, str(exc))
            return
        self.app.call_from_thread(self._show, report)

    def _failed(self, reason: str) -> None:
        self._tested = None
        self.query_one("#result", Static).update("test failed")
        self.say(f"capture failed: {reason}")

    def _show(self, r: CaptureReport) -> None:
        self._tested = r
        if isinstance(self.focused, Input):
            self.set_focus(None)  # out of the source field, so s saves
        findings = r.verdicts() or ["looks fine"]
        self.query_one("#preview", Static).update(r.preview)
        self.query_one("#result", Static).update(
            "\n".join(
                [
                    f"frames     {r.frames}",
                    f"resolution {r.width}x{r.height}",
                    f"fps        {r.fps:.1f} (measured)",
                    f"brightness {r.brightness:.0f} / 255",
                    f"sharpness  {r.blur:.0f}",
                    "",
                    *findings,
                ]
            )
        )
        self.say(f"tested {r.uri}: {r.frames} frames")

    def action_save(self) -> None:
        uri = self._uri()
        problem = source_problem(uri)
        if problem is None and (self._tested is None or self._tested.uri != uri):
            problem = "test this source first (t)"
        self.show_error("source", problem)
        if problem:
            self.say("not saved: nothing was written")
            return
        path = self.device.pipeline_config
        self.confirm(
            "Use this camera source?",
            f"{uri}\nwritten to {path.name}; the agent uses it from its next start",
            lambda: self._write(uri),
            action="source",
            source=uri,
            file=str(path),
        )

    def _write(self, uri: str) -> None:
        from appliance.inference.pipeline import PipelineConfig

        doc = pipeline_settings(self.device)
        doc["source"] = uri
        try:
            msgspec.convert(doc, PipelineConfig)  # the agent must be able to read what we write
        except msgspec.ValidationError as exc:
            self.say(f"not saved: {self.device.pipeline_config}: {exc}")
            return
        body = msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"
        atomic_write_bytes(self.device.pipeline_config, body)
        self.query_one("#configured", Static).update(f"configured: {uri}")
        self.say("saved; restart the agent to use it (systemctl restart edgekiln-agent)")
