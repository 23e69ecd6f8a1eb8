"""One screen per task; each has a ``.tcss`` file of the same name beside it."""

from __future__ import annotations

from collections.abc import Callable

from textual.screen import Screen

from appliance.device import Device
from appliance.tui.screens.camera import CameraScreen
from appliance.tui.screens.logs import LogsScreen
from appliance.tui.screens.model import ModelScreen
from appliance.tui.screens.network import NetworkScreen
from appliance.tui.screens.slots import SlotsScreen
from appliance.tui.screens.status import StatusScreen
from appliance.tui.screens.update import UpdateScreen

SCREENS: dict[str, Callable[[Device], Screen[None]]] = {
    "status": StatusScreen,
    "network": NetworkScreen,
    "camera": CameraScreen,
    "model": ModelScreen,
    "update": UpdateScreen,
    "slots": SlotsScreen,
    "logs": LogsScreen,
}
