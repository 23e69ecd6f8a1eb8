"""One screen per task; each has a ``.tcss`` file of the same name beside it.

Screens are imported when first shown, so the status screen paints without loading the
camera, bundle or self-test code.
"""

from __future__ import annotations

import importlib

from textual.screen import Screen

from appliance.device import Device

SCREENS: dict[str, str] = {
    "status": "appliance.tui.screens.status:StatusScreen",
    "network": "appliance.tui.screens.network:NetworkScreen",
    "camera": "appliance.tui.screens.camera:CameraScreen",
    "model": "appliance.tui.screens.model:ModelScreen",
    "update": "appliance.tui.screens.update:UpdateScreen",
    "slots": "appliance.tui.screens.slots:SlotsScreen",
    "logs": "appliance.tui.screens.logs:LogsScreen",
    "pair": "appliance.tui.screens.pair:PairScreen",
    "fleet": "appliance.tui.screens.fleet:FleetScreen",
}


def make_screen(mode: str, device: Device) -> Screen[None]:
    """Import and build the screen of ``mode``."""
    module, _, name = SCREENS[mode].partition(":")
    screen: Screen[None] = getattr(importlib.import_module(module), name)(device)
    return screen
