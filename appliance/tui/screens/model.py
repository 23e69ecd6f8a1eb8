"""4 Model check: the self-test on the reference split, accuracy and latency against the budget."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Button, ProgressBar, Static

from appliance.errors import ApplianceError
from appliance.fsutil import atomic_write_bytes
from appliance.tui.base import TaskScreen
from appliance.tui.devstatus import pipeline_settings

LAST_NAME = "selftest-last.json"


def render_report(r: dict[str, Any]) -> str:
    """The kept report as label/value lines ([OK]/[!!] words, no colour needed)."""
    verdict = "[OK] passed" if r.get("passed") else "[!!] FAILED"
    lines = [
        f"result     {verdict}  ({r.get('when', '?')})",
        f"model      {r['model']} {r['version']} ({r['file']}) on {r['backend']}",
        f"accuracy   top-1 {r['top1']:.4f} on {r['images']} images, gate {r['min_top1']:.4f}",
        f"infer      p50 {r['infer_p50_ms']:.2f} ms  p95 {r['infer_p95_ms']:.2f} ms"
        f"  budget {r['budget_infer_ms']:.2f} ms",
        f"total      p50 {r['total_p50_ms']:.2f} ms  p95 {r['total_p95_ms']:.2f} ms"
        f"  budget {r['budget_total_ms']:.2f} ms (x{r['budget_factor']:g})",
    ]
    lines += [f"reason     {reason}" for reason in r.get("reasons", [])]
    return "\n".join(lines)


class ModelScreen(TaskScreen):
    """Run (r) the self-test in a worker; the last report is kept on data and shown here."""

    MODE = "model"
    CSS_PATH = Path(__file__).with_suffix(".tcss")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "run", "Run self-test")]

    @property
    def last_path(self) -> Path:
        """Where the last report is kept."""
        return self.device.state_dir / "tui" / LAST_NAME

    def compose_body(self) -> ComposeResult:
        cfg = pipeline_settings(self.device)
        self._package = str(cfg.get("model", ""))
        self._factor = float(cfg.get("budget_factor", 1.0) or 1.0)
        yield Static("Model check", classes="title")
        yield Static(self._describe(), id="package", markup=False)
        with Horizontal(classes="buttons"):
            yield Button("Run self-test (r)", id="run", compact=True)
        yield ProgressBar(total=1, id="progress", show_eta=False)
        yield Static(self._last_text(), id="report", markup=False)
        yield Static("", id="message", classes="message", markup=False)

    def _describe(self) -> str:
        if not self._package:
            return "no model configured in pipeline.json"
        try:
            from appliance.inference.package import load_package

            m = load_package(self._package).manifest
        except ApplianceError as exc:
            return f"model package unreadable: {exc}"
        ref = m.reference
        split = f"{ref.count} reference images, top-1 {ref.top1:.4f}" if ref else "no split"
        return f"package    {m.name} {m.version}: {split}"

    def _last_text(self) -> str:
        try:
            return render_report(json.loads(self.last_path.read_bytes()))
        except (OSError, ValueError, KeyError):
            return "no self-test has run on this device yet: press r"

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "run":
            self.action_run()

    def action_run(self) -> None:
        if not self._package:
            self.say("nothing to test: no model configured")
            return
        self.query_one("#progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#run", Button).disabled = True
        self.say("self-test running on the reference split ...")
        self._run()

    @work(thread=True, exclusive=True, group="selftest")
    def _run(self) -> None:
        from appliance.inference.selftest import run_selftest

        started = time.monotonic()
        try:
            report = run_selftest(self._package, budget_factor=self._factor)
        except ApplianceError as exc:
            self.app.call_from_thread(self._done, None, str(exc), 0.0)
            return
        doc = report.to_json()
        # when it ran (the console's wall clock), not the status clock a demo pins
        ran = time.gmtime(self.tech_app.wall_clock())
        doc["when"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", ran)
        self.last_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.last_path, json.dumps(doc, indent=2).encode() + b"\n")
        self.app.call_from_thread(self._done, doc, "", time.monotonic() - started)

    def _done(self, doc: dict[str, Any] | None, error: str, seconds: float) -> None:
        bar = self.query_one("#progress", ProgressBar)
        self.query_one("#run", Button).disabled = False
        if doc is None:
            bar.update(total=1, progress=0)
            self.say(f"self-test could not run: {error}")
            return
        bar.update(total=1, progress=1)
        self.query_one("#report", Static).update(render_report(doc))
        self.device.log_action("model.selftest", passed=doc["passed"], top1=doc["top1"])
        self.say(f"self-test finished in {seconds:.1f} s; report kept in {self.last_path.name}")
