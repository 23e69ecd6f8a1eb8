"""The Pair screen (key 8): fingerprint, one-time code, revoking a paired laptop."""

from __future__ import annotations

import re
from typing import Any

from textual.widgets import OptionList

from appliance.api.auth import TokenStore, take_pair_code
from appliance.api.tls import cert_fingerprint
from appliance.device import Device
from appliance.tui.app import TechnicianApp
from appliance.tui.demo import DEMO_EPOCH
from tests.tui.conftest import Keys, actions, run_app


def text_of(app: TechnicianApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


def test_pair_screen_code_fingerprint_and_revoke(device: Device) -> None:
    api_dir = device.state_dir / "api"
    store = TokenStore(api_dir)
    token = store.issue("tech@laptop")
    store.issue("[/bold] not markup [link=x]")  # a name a laptop chose: shown as text
    app = TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False)
    shown: dict[str, str] = {}

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "pair: show a pairing code")
        await keys("8", "n")
        assert keys.record() <= 5
        fp = cert_fingerprint(api_dir / "api-cert.pem").removeprefix("sha256:")
        printed = text_of(app, "#fingerprint").replace(" ", "").replace("\n", "")
        assert fp in printed
        match = re.search(r"--code (\d{8})", text_of(app, "#code"))
        assert match is not None
        shown["code"] = match.group(1)
        tokens = app.screen.query_one("#tokens", OptionList)
        assert "tech@laptop" in str(tokens.get_option_at_index(0).prompt)
        assert "[/bold] not markup" in str(tokens.get_option_at_index(1).prompt)
        revoke = Keys(pilot, "pair: revoke a laptop")
        await revoke("tab", "tab", "tab", "tab", "down", "x", "y")
        assert "revoked 1 token(s)" in text_of(app, "#message")

    run_app(app, body)
    assert store.check(token) is None and len(store.load().tokens) == 1
    assert take_pair_code(api_dir, shown["code"]) and not take_pair_code(api_dir, shown["code"])
    assert [a["action"] for a in actions(device)] == ["pair.new_code", "pair.revoke"]


def test_pair_is_in_the_navigation_bar_and_it_fits_80_columns(device: Device) -> None:
    from rich.text import Text

    from appliance.tui.app import TASKS
    from appliance.tui.base import NavBar, nav_text

    for mode, _key, _title in TASKS:
        plain = Text.from_markup(nav_text(mode)).plain
        assert "8 Pair" in plain and len(plain) <= 80, plain
    app = TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "pair: reach it from the navigation bar")
        await keys("8")
        bar = Text.from_markup(nav_text("pair"))
        assert "[8 Pair]" in bar.plain
        shown = str(app.screen.query_one(NavBar).render())
        assert "[8 Pair]" in shown and "1 Status" in shown, shown

    run_app(app, body)
