"""5 Update: bundles on a USB stick (or a typed path), verified manifest first, install, reboot."""

from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from appliance.device import Device
from appliance.errors import ApplianceError
from appliance.localbundle import PinnedBundle
from appliance.tui import usb
from appliance.tui.base import TaskScreen
from appliance.tui.usb import UsbPartition


def find_bundles(globs: tuple[str, ...]) -> list[Path]:
    """``*.bundle`` files at the top of each mounted USB directory (sorted, no duplicates)."""
    found: set[Path] = set()
    for pattern in globs:
        for root in glob.glob(pattern):
            # regular files only: a symlink on a stick could point anywhere on the device
            found.update(
                p for p in Path(root).glob("*.bundle") if p.is_file() and not p.is_symlink()
            )
    return sorted(found)


def _when(ts: int | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


class UpdateScreen(TaskScreen):
    """Enter on a bundle verifies it and shows its manifest; i installs (confirm); b reboots."""

    MODE = "update"
    AUTO_FOCUS = "#bundles"  # an option list: digits still switch tasks
    CSS_PATH = Path(__file__).with_suffix(".tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("i", "install", "Install"),
        Binding("b", "reboot", "Reboot"),
        Binding("u", "rescan", "Rescan USB"),
    ]

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        # The bundle shown, kept open from the check to the install (what is shown is installed)
        self._verified: PinnedBundle | None = None
        self._installed = False

    def compose_body(self) -> ComposeResult:
        yield Static("Update", classes="title")
        yield OptionList(id="bundles", compact=True)
        with Horizontal(classes="form-row"):
            yield Label("Path")
            yield Input(placeholder="/media/usb/x.bundle (Enter verifies)", id="path", compact=True)
        yield Static("", id="path-error", classes="error", markup=False)
        yield Static("select a bundle: its signature is checked before anything is shown",
                     id="manifest", markup=False)  # fmt: skip
        yield ProgressBar(total=1, id="progress", show_eta=False)
        yield Static("", id="message", classes="message", markup=False)

    def on_mount(self) -> None:
        self.action_rescan()

    def action_rescan(self) -> None:
        bundles = find_bundles(self.device.usb_globs)
        self._bundles = bundles
        self._sticks: list[UsbPartition] = []
        if not self.device.demo:  # the demo's "stick" is a directory
            try:
                self._sticks = [p for p in usb.removable_partitions() if not p.mountpoint]
            except ApplianceError as exc:
                self.say(str(exc))
        options = self.query_one("#bundles", OptionList)
        options.clear_options()
        options.add_options(
            Option(f"{p.name}  ({p.stat().st_size // 1024} KiB)", id=f"bundle:{i}")
            for i, p in enumerate(bundles)
        )
        options.add_options(
            Option(
                f"USB {p.name} ({p.fstype}, {p.size}) not mounted: Enter mounts it", id=f"mount:{i}"
            )
            for i, p in enumerate(self._sticks)
        )
        if options.option_count:
            options.highlighted = 0
        else:
            options.add_option(
                Option("no *.bundle on a mounted USB stick; type a path", disabled=True)
            )

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        kind, _, index = (event.option.id or "").partition(":")
        if kind == "bundle":
            self._verify(self._bundles[int(index)])
        elif kind == "mount":
            part = self._sticks[int(index)]
            self.say(f"mounting {part.path} read-only ...")
            self._mount(part)

    @work(thread=True, exclusive=True, group="usb")
    def _mount(self, part: UsbPartition) -> None:
        try:
            where = usb.mount_readonly(part)
        except ApplianceError as exc:
            self.app.call_from_thread(self.say, str(exc))
            return
        self.device.log_action("update.mount", device=part.path, mountpoint=str(where))
        self.app.call_from_thread(self._mounted, part, where)

    def _mounted(self, part: UsbPartition, where: Path) -> None:
        self.action_rescan()
        self.say(f"{part.path} mounted read-only on {where}")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        path = Path(text)
        problem = None
        if not text:
            problem = "type the path of a .bundle file"
        elif not path.is_file():
            problem = f"{path} is not a file"
        self.show_error("path", problem)
        if problem:
            self.say("nothing verified")
            return
        self._verify(path)

    def _forget(self) -> None:
        if self._verified is not None:
            self._verified.close()
            self._verified = None

    def on_unmount(self) -> None:
        self._forget()

    def _verify(self, path: Path) -> None:
        self._forget()
        self._installed = False
        try:
            policy = self.device.policy()
            pinned = PinnedBundle(path, policy)
        except (ApplianceError, OSError) as exc:
            kind = type(exc).__name__
            self.query_one("#manifest", Static).update(
                f"REFUSED {path.name}\n{kind}: {exc}\nThe device was not changed."
            )
            self.device.log_action("update.refused", bundle=str(path), error=f"{kind}: {exc}")
            self.say("this bundle cannot be installed")
            return
        m = pinned.bundle.manifest
        key = policy.keyring.get(m.key_id)
        image = next((p for p in m.payloads if p.kind == "full"), None)
        self.query_one("#manifest", Static).update(
            "\n".join(
                [
                    f"VERIFIED {path.name}",
                    f"version           {m.version}   (running {self.device.config.version})",
                    f"product / target  {m.product} / {', '.join(m.targets)}",
                    f"signer            key {m.key_id} ({key.comment or 'no comment'})",
                    f"security version  {m.security_version} (device floor "
                    f"{policy.min_security_version})",
                    f"created / expires {_when(m.created)} / {_when(m.expires)}",
                    f"image             {image.image.size if image else 0} bytes",
                ]
            )
        )
        self._verified = pinned
        if isinstance(self.focused, Input):
            self.set_focus(None)  # out of the path field, so i installs
        self.say("signature and policy OK: press i to install into the other slot")

    def action_install(self) -> None:
        pinned = self._verified
        if pinned is None:
            self.say("verify a bundle first (Enter on it)")
            return
        try:
            target = {"A": "B", "B": "A"}[self.device.booted()]
        except ApplianceError as exc:
            self.say(f"cannot install: {exc}")
            return
        path = pinned.path
        self.confirm(
            f"Install {path.name} into slot {target}?",
            "The running slot is not touched; the next boot tries the new one once "
            "and returns here if its health check fails.",
            lambda: self._start_install(pinned),
            action="install",
            bundle=str(path),
            version=pinned.bundle.manifest.version,
            slot=target,
        )

    def _start_install(self, pinned: PinnedBundle) -> None:
        self.query_one("#progress", ProgressBar).update(total=None, progress=0)
        self.say(f"installing {pinned.path.name} ...")
        self._install(pinned)

    @work(thread=True, exclusive=True, group="install")
    def _install(self, pinned: PinnedBundle) -> None:
        from appliance.ota.installer import install

        def progress(done: int, total: int) -> None:
            self.app.call_from_thread(self._progress, done, total)

        path = pinned.path
        try:
            # the head shown (pinned in memory) and the rest of the same open file: replacing
            # or rewriting the file since it was shown can only make the install fail
            result = install(
                pinned.install_stream(),  # type: ignore[arg-type]
                policy=self.device.policy(),
                loader=self.device.loader(),
                booted=self.device.booted(),
                source=path.name,
                targets=self.device.slot_targets,  # type: ignore[arg-type]
                data_dir=self.device.data_dir,
                progress=progress,
            )
        except (ApplianceError, OSError) as exc:
            msg = f"{type(exc).__name__}: {exc}"
            self.device.log_action("update.failed", bundle=str(path), error=msg)
            self.app.call_from_thread(self.say, f"install failed: {msg}")
            return
        self.device.log_action(
            "update.installed", version=result.version, slot=result.slot, notes=result.notes
        )
        self.app.call_from_thread(self._installed_ok, result.version, result.slot, result.notes)

    def _progress(self, done: int, total: int) -> None:
        self.query_one("#progress", ProgressBar).update(total=total or None, progress=done)

    def _installed_ok(self, version: str, slot: str, notes: tuple[str, ...] = ()) -> None:
        self._installed = True
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=1, progress=1)
        said = f"installed {version} into slot {slot}, read back and verified: b reboots"
        self.say("\n".join((said, *(f"note: {note}" for note in notes))))

    def action_reboot(self) -> None:
        if not self._installed:
            self.say("nothing installed yet")
            return
        self.confirm(
            "Reboot now into the new slot?",
            "The device is offline for about a minute.",
            lambda: self.say(self.device.reboot()),
            action="reboot",
        )
