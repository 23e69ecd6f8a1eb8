"""The U-Boot side of the A/B protocol: the boot script template and the U-Boot back end.

The same ``ek_*`` variables as grub.cfg (:class:`appliance.slots.loader.EkCodec`), kept in
U-Boot's own environment (redundant copies with a flag byte, see
:mod:`appliance.slots.ubootenv`). The script counts a try down with ``saveenv`` *before*
booting it, exactly like grub.cfg. A garbled environment makes U-Boot fall back to the other
copy, then to its built-in default (no ``ek_committed``): the script boots slot A.

We count with our own ``ek_tries_left`` rather than U-Boot's ``bootcount``/``upgrade_available``
(Mender's scheme): with ``CONFIG_BOOTCOUNT_ENV`` U-Boot increments ``bootcount`` by itself
whenever ``upgrade_available=1``, so the count would depend on how the board's U-Boot was
configured. The script is rendered to ``boot.cmd`` and compiled to ``boot.scr`` with
``mkimage -A arm64 -T script -C none -d boot.cmd boot.scr`` by the builder.

Not executed here: no U-Boot runs on this build host. The script is checked by ``mkimage``
and its variables by the back end tests; the environment format is checked against
``fw_printenv``/``fw_setenv``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from appliance.slots.loader import EkCodec, EnvLoader
from appliance.slots.state import Slot
from appliance.slots.ubootenv import UBootEnvStore

DEFAULT_PARTITIONS: Mapping[Slot, int] = {"A": 2, "B": 3}
DEFAULT_PARTLABELS: Mapping[Slot, str] = {"A": "rootfs_a", "B": "rootfs_b"}
_SAFE = re.compile(r"[A-Za-z0-9_.,:=/+@%{}$-]+")


def render_boot_cmd(
    *,
    devtype: str = "mmc",
    devnum: str = "${devnum}",
    kernel: str = "/boot/Image",
    initrd: str | None = "/boot/initrd.img",
    fdt: str | None = "/boot/dtb",
    cmdline: str = "",
    partitions: Mapping[Slot, int] = DEFAULT_PARTITIONS,
    partlabels: Mapping[Slot, str] = DEFAULT_PARTLABELS,
    reset_delay: int = 10,
    panic_reboot: int = 10,
) -> str:
    """U-Boot hush script (boot.cmd) that picks and boots an A/B slot.

    ``devtype``/``devnum``: the storage U-Boot loads from (``mmc``, ``${devnum}`` as set by
    distro boot); ``kernel``/``initrd``/``fdt``: paths inside the slot's ext4 (None: none);
    ``cmdline``: extra kernel arguments; ``partitions``/``partlabels`` as in grub.cfg;
    ``reset_delay``: seconds to show the error before resetting when no slot loads;
    ``panic_reboot``: seconds after a kernel panic before rebooting. As in grub.cfg, a slot that
    is not the committed one boots with ``edgekiln.trial=1`` (its boot deadline is armed).
    """
    for word in [devtype, devnum, kernel, *(cmdline.split()), *partlabels.values()]:
        if not _SAFE.fullmatch(word):
            raise ValueError(f"{word!r} has characters the U-Boot shell would interpret")
    extra = (" " + " ".join(cmdline.split())) if cmdline.strip() else ""
    where = f"{devtype} {devnum}"
    loads = f"load {devtype} {devnum}:${{ek_part}} ${{kernel_addr_r}} {kernel}"
    boot_args = "${kernel_addr_r} -"
    if initrd:
        loads += f" && load {devtype} {devnum}:${{ek_part}} ${{ramdisk_addr_r}} {initrd}"
        loads += " && setenv ek_rd ${ramdisk_addr_r}:${filesize}"
        boot_args = "${kernel_addr_r} ${ek_rd}"
    if fdt:
        loads += f" && load {devtype} {devnum}:${{ek_part}} ${{fdt_addr_r}} {fdt}"
        boot_args += " ${fdt_addr_r}"
    else:
        boot_args += " ${fdtcontroladdr}"
    return f"""\
# edgekiln A/B boot script: rendered by appliance.slots.uboot.render_boot_cmd. Do not edit.
# Variables: ek_committed=A|B, ek_try=A|B|'', ek_tries_left=1|0.
if test "${{ek_committed}}" = "B"; then setenv ek_slot B; else setenv ek_slot A; fi
setenv ek_home ${{ek_slot}}
if test "${{ek_tries_left}}" = "1" && test "${{ek_try}}" != "${{ek_slot}}"; then
  if test "${{ek_try}}" = "A" || test "${{ek_try}}" = "B"; then
    # Count the try down before booting it; boot it only if that was saved.
    setenv ek_tries_left 0
    if saveenv; then setenv ek_slot ${{ek_try}}; fi
  fi
fi
setenv ek_first ${{ek_slot}}
for ek_round in 1 2; do
  if test "${{ek_slot}}" = "B"; then
    setenv ek_part {int(partitions["B"])}; setenv ek_label {partlabels["B"]}
  else
    setenv ek_part {int(partitions["A"])}; setenv ek_label {partlabels["A"]}
  fi
  if test "${{ek_slot}}" = "${{ek_home}}"; then setenv ek_trial 0; else setenv ek_trial 1; fi
  echo "edgekiln: booting slot ${{ek_slot}} from {where}:${{ek_part}} (trial ${{ek_trial}})"
  # The slot by the partition UUID on this very disk: a name would match a USB stick's too.
  setenv ek_root PARTLABEL=${{ek_label}}
  if part uuid {where}:${{ek_part}} ek_puuid; then setenv ek_root PARTUUID=${{ek_puuid}}; fi
  echo "edgekiln: kernel root ${{ek_root}}"
  setenv bootargs "root=${{ek_root}} ro rootflags=noload rootwait \
panic={int(panic_reboot)} edgekiln.trial=${{ek_trial}} edgekiln.slot=${{ek_slot}}{extra}"
  if {loads}; then
    booti {boot_args}
  fi
  echo "edgekiln: slot ${{ek_slot}} did not load"
  if test "${{ek_first}}" = "B"; then setenv ek_slot A; else setenv ek_slot B; fi
done
echo "edgekiln: no slot could be loaded, resetting"
sleep {int(reset_delay)}
reset
"""


def uboot_loader(fw_env_config: Path = Path("/etc/fw_env.config")) -> EnvLoader:
    """The U-Boot back end, with the environment copies listed in ``fw_env_config``."""
    return EnvLoader("uboot", UBootEnvStore.from_config(fw_env_config), EkCodec())
