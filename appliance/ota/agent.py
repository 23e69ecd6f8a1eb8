"""``appliance update run``: one hands-off pass of the update agent (the timer runs it).

Reads top to bottom as what it enforces; every step is an ``update.*`` event in
``events.jsonl`` and the outcome lands in the agent state (:mod:`appliance.ota.agent_state`):

1. lock on data (never two runs at once);
2. reconcile the last install: committed by the health gate, still on trial, waiting for its
   reboot (rebooted per policy), or rolled back (its image is never tried again: only a newer
   release, with another image, is);
3. honour the backoff after failures (exponential, with jitter);
4. poll the TUF channel (:mod:`appliance.ota.channel`): delta for the active slot or full;
5. skip what rolled back here, what the staged rollout does not admit for this device id and
   site (:mod:`appliance.ota.rollout`), what is over the recipe's size limit or the free space;
6. download into ``DATA/updates`` inside the window, under the rate cap, resuming from the last
   verified chunk (:mod:`appliance.ota.fetch`, with the channel's signed length and sha256); a
   partial download of a release the channel moved on from is removed: ``updates/`` never
   holds more than the current release;
7. install (:func:`appliance.ota.installer.install`: signature, keyring, floor, read-back) and
   reboot per policy (``now``, ``window``, ``manual``).

A failure (server down, HTTP error, truncated body, stalled server, metadata that fails TUF,
a bundle that fails its own signature) is one event with the reason, nothing installed, and a
backoff; an interrupted download keeps its verified bytes for the next run.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.bundle import Policy
from appliance.bundle.errors import BundleError
from appliance.errors import ApplianceError
from appliance.ota import agent_state
from appliance.ota.agent_config import LocalWindow, UpdateConfig, parse_window
from appliance.ota.agent_state import AgentState, EventLog, Pending, Trying
from appliance.ota.channel import ChannelError, Choice, poll
from appliance.ota.errors import SourceError
from appliance.ota.fetch import Expected, Fetcher, FetchError, OutsideWindowError, http_range
from appliance.ota.rollout import admit
from appliance.slots.loader import Loader
from appliance.slots.state import Slot

log = logging.getLogger(__name__)
EXT4_MAGIC = 0xEF53


@dataclass
class Context:
    """The device one pass runs on (the CLI builds it from device.json and update.json)."""

    config: UpdateConfig
    data_dir: Path
    tuf_root: Path
    product: str
    target: str
    version: str  # the running slot's (device.json)
    device_id: str
    site: str | None
    policy: Callable[[], Policy]
    loader: Loader
    booted: Slot
    slots: Mapping[Slot, Path]
    reboot: Callable[[], str]
    now: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    timeout_s: float = 60.0

    @property
    def updates_dir(self) -> Path:
        """Where downloads go (bounded: at most the current release's file)."""
        return self.data_dir / "updates"

    @property
    def window(self) -> LocalWindow | None:
        """The download (and ``window`` reboot) window, local time."""
        return parse_window(self.config.window)


def slot_image_size(path: Path) -> int:
    """Bytes of the slot image in ``path``: an ext4 superblock's size, else the file's size."""
    with open(path, "rb") as f:
        f.seek(1024)
        sb = f.read(1024)
        if len(sb) == 1024 and int.from_bytes(sb[0x38:0x3A], "little") == EXT4_MAGIC:
            blocks = int.from_bytes(sb[0x04:0x08], "little")
            if int.from_bytes(sb[0x60:0x64], "little") & 0x80:  # INCOMPAT_64BIT
                blocks |= int.from_bytes(sb[0x150:0x154], "little") << 32
            return blocks * (1024 << int.from_bytes(sb[0x18:0x1C], "little"))
        return f.seek(0, os.SEEK_END)


def active_sha256(ctx: Context, state: AgentState) -> str:
    """sha256 of the running slot's image (hashed once per slot and version, then cached)."""
    key = f"{ctx.booted}:{ctx.version}"
    if state.active_key == key and state.active_sha256:
        return state.active_sha256
    path = ctx.slots[ctx.booted]
    remaining = slot_image_size(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while remaining and (block := f.read(min(1 << 20, remaining))):
            digest.update(block)
            remaining -= len(block)
    state.active_key, state.active_sha256 = key, digest.hexdigest()
    return state.active_sha256


class Pass:
    """One run of the agent over a :class:`Context` (see the module docstring)."""

    def __init__(self, ctx: Context, events: EventLog) -> None:
        self.ctx = ctx
        self.event = events
        self.state = agent_state.load(ctx.data_dir)

    def _save(self) -> None:
        agent_state.save(self.ctx.data_dir, self.state)

    def _outcome(
        self, name: str, detail: str = "", *, alert: bool = False, **details: object
    ) -> str:
        self.event(name, alert=alert, detail=detail, **details)
        self.state.last_outcome, self.state.last_detail = name, detail
        self._save()
        return name

    def _fail(self, name: str, detail: str, **details: object) -> str:
        self.state.failures += 1
        delay = agent_state.backoff_delay(self.state.failures, self.ctx.rng)
        self.state.next_attempt = self.ctx.now() + delay
        return self._outcome(
            name, detail, alert=True, failures=self.state.failures, retry_in_s=round(delay, 1),
            **details,
        )  # fmt: skip

    def run(self, force: bool = False) -> str:
        """One pass; returns the outcome's event name."""
        outcome = self._reconcile() or self._backoff(force)
        if outcome is not None:
            return outcome
        choice = self._poll()
        if isinstance(choice, str):
            return choice
        if choice is None:
            self._drop_downloads()
            self.state.failures, self.state.pending = 0, None
            return self._outcome("update.up-to-date", "the active slot is the current release")
        outcome = self._skip(choice)
        if outcome is not None:
            return outcome
        bundle = self._download(choice)
        return bundle if isinstance(bundle, str) else self._install(choice, bundle)

    # -- 3. backoff ----------------------------------------------------------------------------

    def _backoff(self, force: bool) -> str | None:
        now = self.ctx.now()
        if force or now >= self.state.next_attempt:
            return None
        return self._outcome(
            "update.backoff",
            f"after {self.state.failures} failures",
            retry_in_s=round(self.state.next_attempt - now, 1),
        )

    # -- 2. the last install -------------------------------------------------------------------

    def _reconcile(self) -> str | None:
        trying = self.state.trying
        if trying is None:
            return None
        boot = self.ctx.loader.read()
        if self.ctx.booted == trying.slot and boot.committed == trying.slot:
            self.state.trying = None
            self.state.active_key = f"{trying.slot}:{self.ctx.version}"
            self.state.active_sha256 = trying.image_sha256
            self._outcome(
                "update.committed",
                f"{trying.version} passed its health gate",
                version=trying.version,
                slot=trying.slot,
            )
            return None
        if self.ctx.booted == trying.slot:
            return self._outcome("update.on-trial", f"{trying.version} waits for its health gate")
        if boot.trying == trying.slot and boot.tries_left > 0:
            return self._reboot(trying.version)
        self.state.trying = None
        if trying.image_sha256 not in self.state.rolled_back:
            self.state.rolled_back = [*self.state.rolled_back[-15:], trying.image_sha256]
        self._outcome(
            "update.rolled-back",
            f"{trying.version} did not commit; not tried again until a newer release",
            version=trying.version,
            slot=trying.slot,
            alert=True,
        )
        return None

    def _reboot(self, version: str) -> str:
        policy = self.ctx.config.reboot
        window = self.ctx.window
        if policy == "manual":
            return self._outcome("update.reboot-pending", f"{version} installed; reboot by hand")
        if policy == "window" and window is not None and not window.allows(self.ctx.now()):
            return self._outcome(
                "update.reboot-deferred",
                f"{version} installed; reboots in the window {self.ctx.config.window}",
                next_window=window.next_open(self.ctx.now()),
            )
        self._outcome("update.rebooting", f"to try {version}", version=version)
        said = self.ctx.reboot()
        log.warning("reboot: %s", said)
        return "update.rebooting"

    # -- 4. poll -------------------------------------------------------------------------------

    def _poll(self) -> Choice | str | None:
        active = active_sha256(self.ctx, self.state)
        errors = []
        for url in self.ctx.config.channels:
            self.state.channel = url
            self.state.last_poll = self.ctx.now()
            try:
                choice = poll(
                    url,
                    self.ctx.data_dir / "tuf",
                    self.ctx.tuf_root,
                    self.ctx.product,
                    self.ctx.target,
                    active,
                )
            except ChannelError as exc:
                errors.append(str(exc))
                continue
            self.event(
                "update.polled",
                channel=url,
                found=None if choice is None else f"{choice.kind} {choice.version}",
            )
            return choice
        return self._fail("update.channel-failed", "; ".join(errors))

    # -- 5. what not to take -------------------------------------------------------------------

    def _skip(self, choice: Choice) -> str | None:
        if choice.image_sha256 in self.state.rolled_back:
            self._drop_downloads()
            self.state.failures = 0
            return self._outcome(
                "update.skipped-rolled-back",
                f"{choice.version} rolled back on this device",
                version=choice.version,
            )
        admission = admit(choice.rollout, self.ctx.device_id, self.ctx.site, choice.version)
        if not admission.allowed:
            self._drop_downloads()
            self.state.failures = 0
            return self._outcome(
                "update.not-in-rollout",
                admission.reason,
                version=choice.version,
                bucket=admission.bucket,
                percent=admission.percent,
            )
        if choice.length > self.ctx.config.max_bundle_bytes:
            return self._fail(
                "update.refused-oversize",
                f"{choice.path} is {choice.length} bytes, this device takes at most "
                f"{self.ctx.config.max_bundle_bytes}",
                version=choice.version,
            )
        return None

    # -- 6. download ---------------------------------------------------------------------------

    def _drop_downloads(self) -> None:
        """Remove every download (part files, journal, bundles): disk use stays bounded."""
        updates = self.ctx.updates_dir
        if not updates.is_dir():
            return
        removed = []
        for entry in updates.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
        if removed:
            self.event("update.dropped-download", files=removed)
        self.state.bytes_downloaded = 0

    def _download(self, choice: Choice) -> Path | str:
        pending = self.state.pending
        if pending is None or pending.sha256 != choice.sha256:
            self._drop_downloads()  # the channel moved on: the old partial file goes
            self.state.pending = Pending(
                choice.version,
                choice.kind,
                choice.path,
                choice.sha256,
                choice.length,
                choice.image_sha256,
            )
            self._save()
        window = self.ctx.window
        if window is not None and not window.allows(self.ctx.now()):
            return self._outcome(
                "update.outside-window",
                f"downloads run in {self.ctx.config.window}",
                next_window=window.next_open(self.ctx.now()),
            )
        self.ctx.updates_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.ctx.updates_dir).free
        if free < choice.length - self.state.bytes_downloaded:
            return self._fail(
                "update.no-space", f"{choice.length} bytes needed, {free} free on data"
            )
        self.event(
            "update.downloading",
            version=choice.version,
            bundle=choice.kind,
            length=choice.length,
            resumed_at=self.state.bytes_downloaded,
            rate=self.ctx.config.rate,
            metered=self.ctx.config.metered,
        )
        fetcher = Fetcher(
            choice.url,
            self.ctx.updates_dir,
            self.ctx.policy(),
            rate=self.ctx.config.rate,
            window=window,
            now=self.ctx.now,
            expected=Expected(choice.length, choice.sha256),
            opener=functools.partial(http_range, timeout=self.ctx.timeout_s),
        )
        try:
            path = fetcher.run()
        except OutsideWindowError as exc:
            self.state.bytes_downloaded += fetcher.fetched
            return self._outcome("update.outside-window", str(exc))
        except SourceError as exc:
            self.state.bytes_downloaded += fetcher.fetched
            return self._fail("update.download-interrupted", str(exc), fetched=fetcher.fetched)
        except (FetchError, BundleError) as exc:
            self.state.pending, self.state.bytes_downloaded = None, 0
            return self._fail("update.download-refused", str(exc), fetched=fetcher.fetched)
        self.state.bytes_downloaded += fetcher.fetched
        self.event("update.downloaded", version=choice.version, fetched=fetcher.fetched)
        return path

    # -- 7. install ----------------------------------------------------------------------------

    def _install(self, choice: Choice, bundle: Path) -> str:
        from appliance.ota.installer import install

        self.event("update.installing", version=choice.version, bundle=choice.kind)
        try:
            with open(bundle, "rb") as stream:
                result = install(
                    stream,
                    policy=self.ctx.policy(),
                    loader=self.ctx.loader,
                    booted=self.ctx.booted,
                    source=str(bundle),
                    targets=self.ctx.slots,
                    data_dir=self.ctx.data_dir,
                )
        except (ApplianceError, OSError) as exc:
            self._drop_downloads()
            self.state.pending = None
            return self._fail("update.install-failed", str(exc), version=choice.version)
        self._drop_downloads()
        self.state.pending, self.state.failures = None, 0
        self.state.trying = Trying(result.version, result.slot, result.image_sha256, self.ctx.now())
        self._outcome(
            "update.installed",
            f"{result.version} in slot {result.slot}",
            version=result.version,
            slot=result.slot,
        )
        return self._reboot(result.version)


def run(ctx: Context, *, force: bool = False) -> str:
    """One pass under the lock on data; the outcome's event name."""
    events = EventLog(ctx.data_dir / "edgekiln" / "events.jsonl")
    try:
        with agent_state.run_lock(ctx.data_dir):
            return Pass(ctx, events).run(force=force)
    except agent_state.AgentBusyError as exc:
        events("update.busy", detail=str(exc))
        raise
