"""2 Network: interfaces and addresses; DHCP or static IPv4 per interface, checked in place."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Input, Label, Select, Static

from appliance.device import Device
from appliance.tui import netconfig
from appliance.tui.base import TaskScreen
from appliance.tui.netconfig import NetSetting

FIELDS = ("address", "gateway", "dns")
IFACE_WIDTH = 76


class NetworkScreen(TaskScreen):
    """Edit one interface's setting; Enter in any field (or Save) checks, confirms and writes."""

    MODE = "network"
    # The form starts on the interface list (a choice, not a text field: digits still switch)
    AUTO_FOCUS = "#iface"
    CSS_PATH = Path(__file__).with_suffix(".tcss")

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self._autofilled: dict[str, str] = {}

    def compose_body(self) -> ComposeResult:
        ifaces = netconfig.list_interfaces(
            self.device.sys_path("/sys/class/net"), with_addresses=not self.device.demo
        )
        self._ifaces = ifaces
        yield Static("Network", classes="title")
        yield Static(self._iface_lines(), id="ifaces", markup=False)
        names = [(i.name, i.name) for i in ifaces]
        with Horizontal(classes="form-row"):
            yield Label("Interface")
            yield Select(
                names, id="iface", compact=True, allow_blank=not names,
                value=names[0][1] if names else Select.NULL,
            )  # fmt: skip
        with Horizontal(classes="form-row"):
            yield Label("Mode")
            yield Select(
                [("DHCP", "dhcp"), ("Static IPv4", "static")],
                id="mode", compact=True, allow_blank=False, value="dhcp",
            )  # fmt: skip
        # Placeholders are words, never an address: on a monochrome terminal a grey example
        # reads as a value (and one from another subnet once a field is cleared with Ctrl+U).
        for name, hint in (
            ("address", "type address/prefix length"),
            ("gateway", "(none) or type the router's address"),
            ("dns", "(none) or type servers, comma-separated"),
        ):
            with Horizontal(classes="form-row"):
                yield Label(name.capitalize() if name != "dns" else "DNS")
                yield Input(placeholder=hint, id=name, compact=True)
            yield Static("", id=f"{name}-error", classes="error", markup=False)
        with Horizontal(classes="buttons"):
            yield Button("Save + apply", id="save", compact=True)
        yield Static("", id="message", classes="message", markup=False)

    def _iface_lines(self) -> str:
        lines = []
        for i in self._ifaces:
            current = netconfig.read_setting(self.device.network_dir, i.name)
            conf = "not set"
            if current is not None:
                conf = "DHCP" if current.dhcp else f"static {current.address}"
            addrs = ", ".join(i.addresses) or "no address"
            line = f"{i.name:<6} {i.state:<4} {i.mac} {addrs:<18} set: {conf}"
            # one line per interface at 80 columns (the body has 2 of padding)
            lines.append(line if len(line) <= IFACE_WIDTH else line[: IFACE_WIDTH - 1] + "~")
        return "\n".join(lines) or "no network interfaces found"

    def on_mount(self) -> None:
        self._load_current()

    def _setting(self) -> NetSetting:
        iface = self.query_one("#iface", Select).value
        mode = self.query_one("#mode", Select).value
        return NetSetting(
            iface=str(iface) if isinstance(iface, str) else "",
            dhcp=mode == "dhcp",
            address=self.query_one("#address", Input).value,
            gateway=self.query_one("#gateway", Input).value,
            dns=netconfig.parse_dns(self.query_one("#dns", Input).value),
        )

    def _load_current(self) -> None:
        iface = self.query_one("#iface", Select).value
        current = (
            netconfig.read_setting(self.device.network_dir, iface)
            if isinstance(iface, str)
            else None
        )
        self.query_one("#mode", Select).value = "static" if current and not current.dhcp else "dhcp"
        self.query_one("#address", Input).value = current.address if current else ""
        self.query_one("#gateway", Input).value = current.gateway if current else ""
        self.query_one("#dns", Input).value = ", ".join(current.dns) if current else ""
        self._sync_mode()

    def _sync_mode(self) -> None:
        static = self.query_one("#mode", Select).value == "static"
        for name in FIELDS:
            self.query_one(f"#{name}", Input).disabled = not static

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "iface":
            self._load_current()
        else:
            self._sync_mode()
        self._show_errors({})

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "address":
            return
        # A valid address proposes the subnet's first host as gateway and DNS (still editable).
        try:
            iface = ipaddress.IPv4Interface(event.value.strip())
        except ValueError:
            return
        if "/" not in event.value or iface.network.num_addresses < 4:
            return
        first = str(next(iface.network.hosts()))
        for name in ("gateway", "dns"):
            field = self.query_one(f"#{name}", Input)
            if field.value in ("", self._autofilled.get(name)):
                field.value = first
                self._autofilled[name] = first

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.save()

    def _show_errors(self, errors: dict[str, str]) -> None:
        for name in FIELDS:
            self.show_error(name, errors.get(name))

    def save(self) -> None:
        """Validate in place; when clean, confirm, write atomically and apply."""
        setting = self._setting()
        errors = netconfig.validate(setting)
        self._show_errors(errors)
        if errors:
            if "iface" in errors:
                errors.pop("iface")
                self.say("not saved: choose an interface")
            else:
                self.say("not saved: fix the marked field(s); nothing was written")
            return
        path = netconfig.file_for(self.device.network_dir, setting.iface)
        what = "DHCP" if setting.dhcp else f"static {setting.address}"
        self.confirm(
            f"Write {setting.iface}: {what} and apply it?",
            f"{path.name}:\n{netconfig.render(setting)}",
            lambda: self._write(setting),
            action="write",
            iface=setting.iface,
            file=str(path),
            content=netconfig.render(setting),
        )

    def _write(self, setting: NetSetting) -> None:
        path = netconfig.write_setting(self.device.network_dir, setting)
        result = netconfig.apply(self.device.demo)
        self.device.log_action("network.apply", iface=setting.iface, result=result)
        self.query_one("#ifaces", Static).update(self._iface_lines())
        self.say(f"saved {path.name}; {result}")
        # out of the form once saved, so the digit keys switch tasks again (the modal that
        # asked gives focus back to the field it came from: leave it after that)
        self.call_after_refresh(self.set_focus, None)
