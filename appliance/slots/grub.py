"""The GRUB side of the A/B protocol: grub.cfg for the ESP, and the GRUB back end.

The builder renders :func:`render_grub_cfg` into ``/grub/grub.cfg`` on the ESP (and
:func:`render_embed_cfg` into the EFI image's embedded config), builds the EFI image with
exactly :data:`GRUB_MODULES`, and writes :func:`initial_env` to both :data:`ENV_PATH` and
:data:`ENV_BACKUP_PATH`. On the device, :func:`grub_loader` drives the same files.

Protocol (variables in the grubenv block; see :class:`appliance.slots.loader.EkCodec`):

* ``ek_committed`` = A|B: the default slot. A copy without a valid value is garbled: grub.cfg
  then reads the backup copy, and with both garbled boots the safe default, slot A.
* ``ek_try`` = A|B and ``ek_tries_left`` = 1: boot that slot once. grub.cfg sets
  ``ek_tries_left=0`` with ``save_env`` *before* booting it, and boots it only if that save
  succeeded, so a crash, hang or power cut in the tried system returns to the committed slot.
* Slots are GPT partitions on the ESP's own disk (derived from ``$root``): A -> partition 2,
  B -> partition 3 by default. The kernel and initrd come from inside the slot's ext4; the
  kernel is told ``root=PARTUUID=<that partition's UUID>`` (probed by GRUB on the ESP's own
  disk; ``PARTLABEL=rootfs_a|rootfs_b`` only if the probe fails) and ``edgekiln.slot=A|B``.
* If the chosen slot's kernel cannot be loaded, grub.cfg tries the other slot, then reboots.
* Boot-level deadline (see :mod:`appliance.slots.trial`): a slot booted while it is not the
  committed one gets ``edgekiln.trial=1`` (else ``edgekiln.trial=0``), which arms a systemd
  timer that reboots unless the slot was committed in time; every boot gets ``panic=N`` so a
  kernel panic, or an initramfs that cannot find or mount the root, reboots (initramfs-tools
  honours ``panic=``) instead of waiting at a prompt. Each reboot lands on the committed slot:
  the try was counted down before the tried kernel was loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from appliance.slots.grubenv import GrubEnvStore, render
from appliance.slots.loader import EkCodec, EnvLoader
from appliance.slots.state import BootState, Slot

#: Modules the EFI image needs for the embedded config and grub.cfg (pass to grub-mkimage).
GRUB_MODULES: tuple[str, ...] = (
    "part_gpt",
    "fat",
    "ext2",
    "search",
    "search_label",
    "search_fs_uuid",
    "normal",
    "configfile",
    "loadenv",
    "regexp",
    "probe",
    "test",
    "true",
    "echo",
    "linux",
    "efi_gop",
    "sleep",
    "reboot",
)
#: Paths on the ESP.
GRUB_DIR = "/grub"
GRUB_CFG_PATH = "/grub/grub.cfg"
ENV_PATH = "/grub/grubenv"
ENV_BACKUP_PATH = "/grub/grubenv.bak"

DEFAULT_PARTITIONS: Mapping[Slot, int] = {"A": 2, "B": 3}
DEFAULT_PARTLABELS: Mapping[Slot, str] = {"A": "rootfs_a", "B": "rootfs_b"}
_SAFE_ARG = re.compile(r"[A-Za-z0-9_.,:=/+@%-]+")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_./+-]+")


def _check_cmdline(cmdline: str) -> str:
    words = cmdline.split()
    for word in words:
        if not _SAFE_ARG.fullmatch(word):
            raise ValueError(
                f"kernel argument {word!r} has characters GRUB script would interpret; "
                "use only letters, digits and _.,:=/+@%-"
            )
    return " ".join(words)


def render_grub_cfg(
    *,
    kernel: str = "/boot/vmlinuz",
    initrd: str | None = "/boot/initrd.img",
    cmdline: str = "",
    partitions: Mapping[Slot, int] = DEFAULT_PARTITIONS,
    partlabels: Mapping[Slot, str] = DEFAULT_PARTLABELS,
    env_path: str = ENV_PATH,
    env_backup_path: str = ENV_BACKUP_PATH,
    reboot_delay: int = 10,
    panic_reboot: int = 10,
) -> str:
    """The ESP's grub.cfg that picks and boots an A/B slot from the grubenv.

    Parameters (all keyword-only):

    * ``kernel`` / ``initrd``: paths inside each slot's filesystem (``initrd=None``: none).
    * ``cmdline``: extra kernel arguments, e.g. ``"console=ttyS0 quiet"``; the script itself
      adds ``root=PARTUUID=<uuid> ro rootflags=noload rootwait panic=<panic_reboot>
      edgekiln.trial=<0|1> edgekiln.slot=<A|B>`` (a ``panic=`` in ``cmdline`` comes later and
      wins).
    * ``partitions``: GPT partition number per slot on the ESP's disk (default A=2, B=3).
    * ``partlabels``: GPT partition name per slot (default rootfs_a, rootfs_b).
    * ``env_path`` / ``env_backup_path``: the two grubenv copies on the ESP.
    * ``reboot_delay``: seconds to show the error before rebooting when no slot loads.
    * ``panic_reboot``: seconds after a kernel panic (or initramfs failure) before rebooting.

    The script expects ``$root`` to be the ESP (the embedded config sets it).
    """
    extra = _check_cmdline(cmdline)
    for path in (kernel, initrd, env_path, env_backup_path):
        if path is not None and not _SAFE_PATH.fullmatch(path):
            raise ValueError(f"path {path!r} must be absolute and use only [A-Za-z0-9_./+-]")
    for slot in ("A", "B"):
        if not _SAFE_ARG.fullmatch(partlabels[slot]) or int(partitions[slot]) < 1:
            raise ValueError(f"bad partition number or label for slot {slot}")
    tail = f" {extra}" if extra else ""
    initrd_cmd = (
        f'    if initrd "${{ek_dev}}{initrd}"; then\n      boot\n    fi\n'
        if initrd
        else "    boot\n"
    )
    return f"""\
# edgekiln A/B boot script: rendered by appliance.slots.grub.render_grub_cfg. Do not edit.
# Variables in the grubenv: ek_committed=A|B, ek_try=A|B|'', ek_tries_left=1|0.
set ek_env="($root){env_path}"
set ek_env_bak="($root){env_backup_path}"
# The slots are partitions of the disk this ESP is on: hd0,gpt1 -> hd0.
set ek_disk=hd0
regexp --set=ek_disk '^(.*),gpt[0-9]+$' "$root"

function ek_load {{
  unset ek_committed
  unset ek_try
  unset ek_tries_left
  set ek_ok=0
  if load_env --file "$1" ek_committed ek_try ek_tries_left; then
    if [ "$ek_committed" = A -o "$ek_committed" = B ]; then
      set ek_ok=1
    fi
  fi
}}

function ek_boot {{
  if [ "$1" = B ]; then
    set ek_dev="(${{ek_disk}},gpt{int(partitions["B"])})"
    set ek_label={partlabels["B"]}
  else
    set ek_dev="(${{ek_disk}},gpt{int(partitions["A"])})"
    set ek_label={partlabels["A"]}
  fi
  # Not the committed slot: on trial, the system arms its boot deadline (edgekiln.trial=1).
  if [ "$1" = "$ek_committed" ]; then
    set ek_trial=0
  else
    set ek_trial=1
  fi
  # The kernel finds the slot by the partition UUID of the partition GRUB loads it from (on
  # the ESP's disk): a name would match a USB stick's partition named like a slot too.
  set ek_root="PARTLABEL=$ek_label"
  if probe --set=ek_puuid --part-uuid "$ek_dev"; then
    set ek_root="PARTUUID=$ek_puuid"
  fi
  echo "edgekiln: booting slot $1 from $ek_dev (trial $ek_trial)"
  if linux "${{ek_dev}}{kernel}" root=$ek_root ro rootflags=noload rootwait \
panic={int(panic_reboot)} edgekiln.trial=$ek_trial edgekiln.slot=$1{tail}; then
{initrd_cmd}  fi
}}

# A garbled primary copy (torn write) falls back to the backup, then to slot A.
set ek_src="$ek_env"
set ek_alt="$ek_env_bak"
ek_load "$ek_env"
if [ "$ek_ok" != 1 ]; then
  set ek_src="$ek_env_bak"
  set ek_alt="$ek_env"
  ek_load "$ek_env_bak"
fi
if [ "$ek_ok" != 1 ]; then
  set ek_src=
  set ek_committed=A
  set ek_try=
  set ek_tries_left=0
  echo "edgekiln: no usable grubenv, booting the safe default slot A"
fi

set ek_slot="$ek_committed"
if [ "$ek_try" != "$ek_committed" -a "$ek_tries_left" = 1 ]; then
  if [ "$ek_try" = A -o "$ek_try" = B ]; then
    # Count the try down before booting it; boot it only if that was saved.
    set ek_tries_left=0
    if save_env --file "$ek_src" ek_tries_left; then
      set ek_slot="$ek_try"
      save_env --file "$ek_alt" ek_tries_left
    else
      echo "edgekiln: cannot save grubenv, not trying slot $ek_try"
    fi
  fi
fi

if [ "$ek_slot" = B ]; then
  set ek_other=A
else
  set ek_other=B
fi
ek_boot "$ek_slot"
echo "edgekiln: slot $ek_slot did not load, trying slot $ek_other"
ek_boot "$ek_other"

echo "edgekiln: no slot could be loaded, rebooting in {int(reboot_delay)} s"
sleep {int(reboot_delay)}
reboot
"""


def render_embed_cfg(esp_label: str) -> str:
    """The config to embed in the EFI image: find the ESP by label and run its grub.cfg."""
    if not _SAFE_ARG.fullmatch(esp_label):
        raise ValueError(f"ESP label {esp_label!r} must use only letters, digits and _.,:=/+@%-")
    return (
        f"search --no-floppy --label {esp_label} --set=root\n"
        f"set prefix=($root){GRUB_DIR}\n"
        f"configfile ($root){GRUB_CFG_PATH}\n"
    )


def initial_env(state: BootState | None = None) -> bytes:
    """The grubenv block to write at build time (both copies): slot A committed."""
    return render(EkCodec().encode(state or BootState()))


def grub_loader(esp_root: Path) -> EnvLoader:
    """The GRUB back end for an ESP mounted at ``esp_root`` (e.g. /boot/efi)."""
    store = GrubEnvStore(
        Path(esp_root) / ENV_PATH.lstrip("/"), Path(esp_root) / ENV_BACKUP_PATH.lstrip("/")
    )
    return EnvLoader("grub", store, EkCodec())
