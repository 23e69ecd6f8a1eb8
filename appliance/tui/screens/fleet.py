"""9 Fleet: the site this device belongs to and the broker its telemetry goes to."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Input, Label, Static

from appliance.tui import fleetlink
from appliance.tui.base import TaskScreen


class FleetScreen(TaskScreen):
    """Edit site and broker host; Enter in a field (or Save) checks, confirms, writes, applies."""

    MODE = "fleet"
    CSS_PATH = Path(__file__).with_suffix(".tcss")

    def compose_body(self) -> ComposeResult:
        yield Static("Fleet link", classes="title")
        yield Static("", id="current", markup=False)
        for name, label, hint in (
            ("site", "Site", "type the site name, e.g. plant-a"),
            ("broker", "Broker host", "(empty: the image's broker) or type a host name"),
        ):
            with Horizontal(classes="form-row"):
                yield Label(label)
                yield Input(placeholder=hint, id=name, compact=True)
            yield Static("", id=f"{name}-error", classes="error", markup=False)
        with Horizontal(classes="buttons"):
            yield Button("Save + apply", id="save", compact=True)
        yield Static("", id="message", classes="message", markup=False)

    def on_mount(self) -> None:
        self._load()

    def _load(self) -> None:
        link = fleetlink.read_link(self.device)
        self.query_one("#current", Static).update(
            f"site {link.site or 'unassigned'}; broker {link.broker_host or '-'} "
            f"({link.broker_from})"
        )
        self.query_one("#site", Input).value = link.site
        own = link.broker_from == "set on this device"
        self.query_one("#broker", Input).value = link.broker_host if own else ""

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.save()

    def save(self) -> None:
        """Validate in place; when clean, confirm, write atomically and restart the agent."""
        site = self.query_one("#site", Input).value.strip()
        host = self.query_one("#broker", Input).value.strip()
        errors = fleetlink.validate(site, host)
        for name in ("site", "broker"):
            self.show_error(name, errors.get(name))
        if errors:
            self.say("not saved: fix the marked field(s); nothing was written")
            return
        self.confirm(
            "Save the fleet link and restart the agent?",
            f"site: {site}\nbroker host: {host or '(the image recipe broker)'}",
            lambda: self._write(site, host),
            action="write",
            site=site,
            broker_host=host,
        )

    def _write(self, site: str, host: str) -> None:
        fleetlink.write_link(self.device, site, host)
        result = fleetlink.restart_agent(self.device.demo)
        self.device.log_action("fleet.apply", result=result)
        self._load()
        self.say(f"saved on data; {result}")
        self.call_after_refresh(self.set_focus, None)
