"""8 Pair: the LAN API's certificate fingerprint, one-time pairing codes, paired laptops.

The technician reads the fingerprint and the code from here into ``kiln pair``; paired laptops
are listed by name with their token-hash prefix and can be revoked. ``s`` starts the API
service for this boot when the recipe left it off.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Button, OptionList, Static
from textual.widgets.option_list import Option

from appliance.errors import ApplianceError
from appliance.tui.base import TaskScreen

API_UNIT = "edgekiln-api.service"


def grouped(fingerprint: str) -> str:
    """``sha256:abcd...`` as groups of four, two lines: easy to compare by eye."""
    hexpart = fingerprint.removeprefix("sha256:")
    groups = [hexpart[i : i + 4] for i in range(0, len(hexpart), 4)]
    return "sha256\n" + " ".join(groups[:8]) + "\n" + " ".join(groups[8:])


class PairScreen(TaskScreen):
    """n makes a pairing code, x revokes the highlighted laptop (confirm), s starts the API."""

    MODE = "pair"
    CSS_PATH = Path(__file__).with_suffix(".tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new_code", "New code"),
        Binding("x", "revoke", "Revoke"),
        Binding("s", "start_api", "Start API"),
    ]

    @property
    def api_dir(self) -> Path:
        return self.device.state_dir / "api"

    def compose_body(self) -> ComposeResult:
        yield Static("Pair a laptop (site LAN)", classes="title")
        yield Static("", id="api-state", markup=False)
        yield Static("", id="fingerprint", markup=False)
        yield Static("", id="code", markup=False)
        with Horizontal(classes="buttons"):
            yield Button("New code (n)", id="new_code", compact=True)
            yield Button("Revoke (x)", id="revoke", compact=True)
            yield Button("Start API (s)", id="start_api", compact=True)
        yield Static("Paired laptops:", markup=False)
        yield OptionList(id="tokens", compact=True)
        yield Static("", id="message", classes="message", markup=False)

    def on_mount(self) -> None:
        self.refresh_all()

    def refresh_all(self) -> None:
        """Certificate (made on first use), service state, paired laptops."""
        from appliance.api.auth import TokenStore
        from appliance.api.tls import ensure_certificate

        try:
            _, _, fp = ensure_certificate(self.api_dir, self.device.device_id())
            self.query_one("#fingerprint", Static).update("certificate " + grouped(fp))
        except ApplianceError as exc:
            self.query_one("#fingerprint", Static).update(f"no certificate: {exc}")
        self.query_one("#api-state", Static).update(f"LAN API: {self.api_state()}")
        tokens = self.query_one("#tokens", OptionList)
        tokens.clear_options()
        try:
            records = TokenStore(self.api_dir).load().tokens
        except ApplianceError as exc:
            self.say(str(exc))
            return
        import time

        for record in records:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(record.created))
            # the name comes from the laptop: shown as plain text, never as markup
            line = Text(f"{record.sha256[:12]}  {when}  {record.name}")
            tokens.add_option(Option(line, id=record.sha256[:12]))
        if not records:
            tokens.add_option(Option("(none)", id="none", disabled=True))

    def api_state(self) -> str:
        if self.device.demo:
            return "demo device (service state not read)"
        exe = shutil.which("systemctl")
        if exe is None:
            return "systemctl not available"
        proc = subprocess.run(
            [exe, "is-active", API_UNIT], capture_output=True, text=True, check=False
        )
        state = proc.stdout.strip() or "unknown"
        return f"{state} ({API_UNIT})" + ("" if state == "active" else "; s starts it")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        action = {"new_code": self.action_new_code, "revoke": self.action_revoke}
        action["start_api"] = self.action_start_api
        if event.button.id in action:
            action[event.button.id]()

    def action_new_code(self) -> None:
        from appliance.api.auth import CODE_TTL_S, new_pair_code

        try:
            # also on the console (the serial port): skipped when that is this TUI's screen
            code = new_pair_code(
                self.api_dir,
                console=self.device.sys_path("/dev/console"),
                sysfs=self.device.sys_path("/sys/class/tty"),
            )
        except OSError as exc:
            self.say(f"cannot make a code: {exc}")
            return
        self.device.log_action("pair.new_code")
        shown = f"{code[:4]} {code[4:]}"
        self.query_one("#code", Static).update(
            f"pairing code: {shown}   (valid {CODE_TTL_S // 60} min, once)\n"
            f"on the laptop: kiln pair <address> --code {code}"
        )

    def _paired(self) -> bool:
        from appliance.api.auth import TokenStore

        try:
            return bool(TokenStore(self.api_dir).load().tokens)
        except ApplianceError:
            return True  # a damaged token file: the service will say so; make no code

    def action_revoke(self) -> None:
        tokens = self.query_one("#tokens", OptionList)
        index = tokens.highlighted
        if index is None or tokens.get_option_at_index(index).id in (None, "none"):
            self.say("highlight a paired laptop first (Tab, arrows)")
            return
        prefix = str(tokens.get_option_at_index(index).id)
        self.confirm(
            f"Revoke laptop {prefix}?",
            "Its token stops working at once; it must pair again with a new code.",
            lambda: self._do_revoke(prefix),
            action="revoke",
            token=prefix,
        )

    def _do_revoke(self, prefix: str) -> None:
        from appliance.api.auth import TokenStore

        try:
            count = TokenStore(self.api_dir).revoke(prefix)
        except (ApplianceError, OSError) as exc:
            self.say(f"revoke failed: {exc}")
            return
        self.refresh_all()
        self.say(f"revoked {count} token(s)")

    def action_start_api(self) -> None:
        if self.device.demo:
            self.say(f"demo device: a real device would run systemctl start {API_UNIT}")
            return
        exe = shutil.which("systemctl")
        if exe is None:
            self.say("systemctl is not available here")
            return
        # nobody paired yet: a code on this screen first, so the service opens no pairing of
        # its own at start (it would write that code to the console: maybe this terminal)
        if not self._paired():
            self.action_new_code()
        proc = subprocess.run([exe, "start", API_UNIT], capture_output=True, text=True, check=False)
        self.device.log_action("pair.start_api", ok=proc.returncode == 0)
        self.say("LAN API started" if proc.returncode == 0 else proc.stderr.strip())
        self.refresh_all()
