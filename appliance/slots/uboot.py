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
from dataclasses import dataclass
from pathlib import Path

from appliance.slots.loader import EkCodec, EnvLoader
from appliance.slots.state import Slot
from appliance.slots.ubootenv import UBootEnvStore

DEFAULT_PARTITIONS: Mapping[Slot, int] = {"A": 2, "B": 3}
DEFAULT_PARTLABELS: Mapping[Slot, str] = {"A": "rootfs_a", "B": "rootfs_b"}
EK_VARIABLES = ("ek_committed", "ek_try", "ek_tries_left", "ek_bad")  # EkCodec's names
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
    env_files: EnvFiles | None = None,
) -> str:
    """U-Boot hush script (boot.cmd) that picks and boots an A/B slot.

    ``devtype``/``devnum``: the storage U-Boot loads from (``mmc``, ``${devnum}`` as set by
    distro boot); ``kernel``/``initrd``/``fdt``: paths inside the slot's ext4 (None: none);
    ``cmdline``: extra kernel arguments; ``partitions``/``partlabels`` as in grub.cfg;
    ``reset_delay``: seconds to show the error before resetting when no slot loads;
    ``panic_reboot``: seconds after a kernel panic before rebooting. As in grub.cfg, a slot that
    is not the committed one boots with ``edgekiln.trial=1`` (its boot deadline is armed).
    ``env_files``: keep the variables in two files on a FAT partition of the same disk instead
    of U-Boot's own environment (:class:`EnvFiles`; for U-Boot builds that cannot save theirs).
    """
    for word in [devtype, devnum, kernel, *(cmdline.split()), *partlabels.values()]:
        if not _SAFE.fullmatch(word):
            raise ValueError(f"{word!r} has characters the U-Boot shell would interpret")
    extra = (" " + " ".join(cmdline.split())) if cmdline.strip() else ""
    where = f"{devtype} {devnum}"
    load_env, save = "", "saveenv"
    if env_files is not None:
        load_env, save = env_files.script(where)
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
{load_env}if test "${{ek_committed}}" = "B"; then setenv ek_slot B; else setenv ek_slot A; fi
setenv ek_home ${{ek_slot}}
if test "${{ek_tries_left}}" = "1" && test "${{ek_try}}" != "${{ek_slot}}"; then
  if test "${{ek_try}}" = "A" || test "${{ek_try}}" = "B"; then
    # Count the try down before booting it; boot it only if that was saved.
    setenv ek_tries_left 0
    if {save}; then setenv ek_slot ${{ek_try}}; fi
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


@dataclass(frozen=True)
class EnvFiles:
    """The A/B variables in two files on a FAT partition, in libubootenv's redundant layout.

    Each file is one copy (``crc32 | flag | data``, :mod:`appliance.slots.ubootenv`), so
    ``fw_printenv``/``fw_setenv`` and :class:`UBootEnvStore` use them through a fw_env.config
    listing both files (:meth:`fw_env_config`). The boot script imports them into U-Boot's
    running environment (the older copy first, then the newer one: a bad CRC is refused by
    ``env import -c`` and leaves the other's values) and counts a try down by writing the
    *other* copy with the next flag (``env export -c`` + ``fatwrite``), as libubootenv does.
    Only the ``ek_*`` variables are kept there; U-Boot's own stay in its built-in default.
    """

    part: int = 1
    names: tuple[str, str] = ("uboot.env", "uboot2.env")
    size: int = 0x4000
    #: scratch RAM for the two copies and the re-arranged block, as offsets from ${scriptaddr}
    #: (qemu_arm64: 0x40200000; the kernel is loaded at 0x40400000)
    scratch: int = 0x100000

    def fw_env_config(self, mount_point: str) -> str:
        """fw_env.config for the partition mounted at ``mount_point`` (e.g. /boot/efi)."""
        lines = [f"{mount_point.rstrip('/')}/{name} 0x0 {self.size:#x}" for name in self.names]
        return (
            "# edgekiln A/B environment (appliance.slots.uboot.EnvFiles)\n"
            + "\n".join(lines)
            + "\n"
        )

    def script(self, where: str) -> tuple[str, str]:
        """(script lines that load the variables, the command that saves the counted-down try)."""
        size, part = self.size, int(self.part)
        for name in self.names:
            if not _SAFE.fullmatch(name):
                raise ValueError(f"{name!r} has characters the U-Boot shell would interpret")
        names = " ".join(EK_VARIABLES)
        b0, b1, w = self.scratch, self.scratch + 0x10000, self.scratch + 0x20000
        load = f"""\
# The variables: two copies (crc32 | flag | data) in {self.names[0]} and {self.names[1]} on
# partition {part}. The newer flag wins (0 after 0xff), a copy with a bad CRC loses.
setexpr ek_b0 ${{scriptaddr}} + {b0:#x}; setexpr ek_f0 ${{ek_b0}} + 4
setexpr ek_b1 ${{scriptaddr}} + {b1:#x}; setexpr ek_f1 ${{ek_b1}} + 4
setexpr ek_w ${{scriptaddr}} + {w:#x}; setexpr ek_w4 ${{ek_w}} + 4
mw.b ${{ek_b0}} 0 {2 * 0x10000:#x}
load {where}:{part} ${{ek_b0}} /{self.names[0]}
load {where}:{part} ${{ek_b1}} /{self.names[1]}
setenv ek_new 0
if itest.b *${{ek_f1}} -gt *${{ek_f0}}; then setenv ek_new 1; fi
if itest.b *${{ek_f0}} == 0xff && itest.b *${{ek_f1}} == 0; then setenv ek_new 1; fi
if itest.b *${{ek_f1}} == 0xff && itest.b *${{ek_f0}} == 0; then setenv ek_new 0; fi
if test "${{ek_new}}" = "1"; then setenv ek_order "0 1"; else setenv ek_order "1 0"; fi
setenv ek_cur none
for ek_i in ${{ek_order}}; do
  if test "${{ek_i}}" = "0"; then setenv ek_src ${{ek_b0}}; else setenv ek_src ${{ek_b1}}; fi
  setexpr ek_data ${{ek_src}} + 5
  cp.l ${{ek_src}} ${{ek_w}} 1
  cp.b ${{ek_data}} ${{ek_w4}} {size - 5:#x}
  if env import -c ${{ek_w}} {size - 1:#x} {names}; then setenv ek_cur ${{ek_i}}; fi
done
# The next save goes to the copy that is not current, with its flag + 1.
if test "${{ek_cur}}" = "1"; then
  setenv ek_dst ${{ek_b0}}; setenv ek_file /{self.names[0]}; setexpr.b ek_nf *${{ek_f1}} + 1
else
  setenv ek_dst ${{ek_b1}}; setenv ek_file /{self.names[1]}; setexpr.b ek_nf *${{ek_f0}} + 1
fi
setexpr ek_dstf ${{ek_dst}} + 4; setexpr ek_dstd ${{ek_dst}} + 5
echo "edgekiln: environment copy ${{ek_cur}}, committed ${{ek_committed}}"
"""
        save = (
            f"env export -c -s {size - 1:#x} ${{ek_w}} {names}"
            " && cp.l ${ek_w} ${ek_dst} 1 && mw.b ${ek_dstf} ${ek_nf}"
            f" && cp.b ${{ek_w4}} ${{ek_dstd}} {size - 5:#x}"
            f" && fatwrite {where}:{part} ${{ek_dst}} ${{ek_file}} {size:#x}"
        )
        return load, save


def uboot_loader(fw_env_config: Path = Path("/etc/fw_env.config")) -> EnvLoader:
    """The U-Boot back end, with the environment copies listed in ``fw_env_config``."""
    return EnvLoader("uboot", UBootEnvStore.from_config(fw_env_config), EkCodec())
