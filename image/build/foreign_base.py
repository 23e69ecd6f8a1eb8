"""mmdebstrap options for a foreign-arch (arm64) base: the same Debian root, less emulation.

A foreign base runs dpkg and every maintainer script under qemu-user, where each program costs
~10x its native time and each start of one costs a translation of its loader and libc. The
options here keep the installed files what Debian's packages make; they only move work out of
the emulator or stop it from being done twice (tools/bench_base.py shows where it goes):

- merged-/usr set up by mmdebstrap's own hook (the /bin, /sbin, /lib symlinks and the
  usr-is-merged package, as debootstrap does) instead of the usrmerge package, which pulls in
  perl and converts the tree with an emulated perl;
- no fsync per unpacked file (``force-unsafe-io``): a half-written base is never used, the
  cache takes a base only once it is complete;
- the initrd made once, after every package is configured: the kernel package's hook would make
  it, and the initramfs-tools trigger that other packages (udev, kmod, ...) activate would make
  it again (each ~6 min under qemu-user on a loaded 2-core host). Debian's kernel hooks skip the
  initrd when the environment says ``INITRD=No``; the trigger then finds no initrd to update,
  and a customize hook makes it with the same tool and configuration, with ``MODULES=list``
  (``INITRD_MODULES``: initramfs-tools' default ``MODULES=most`` copies every storage and file
  system module, one emulated process per file, and took over 20 min);
- ``/etc/ssl/certs`` made by the package's own ``update-ca-certificates`` (a shell script) run
  once by the host's shell and tools on the tree, instead of twice emulated (configure and
  trigger: ~4 emulated programs per certificate, ~150 certificates, and an emulated ``openssl
  rehash``). While packages are configured the script is diverted to a no-op (``dpkg-divert``,
  so dpkg still owns the file); afterwards the diversion is removed and the script runs with
  its path options pointing into the tree; the links it makes absolute are then made to point
  inside the image (``/usr/share/ca-certificates/...``), as the emulated run would have made
  them. If an installed package added a hook to ``/etc/ca-certificates/update.d`` (e.g.
  ca-certificates-java), the script is run once more in the root (emulated) so the hook runs.
"""

from __future__ import annotations

from pathlib import Path

MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")
#: environment of mmdebstrap (and so of the maintainer scripts) for a foreign base
FOREIGN_ENV = {"INITRD": "No"}
# virtio: QEMU -M virt; mmc/sdhci: eMMC and SD (i.MX 8M: esdhc); usb/uas/xhci/nvme: other roots.
INITRD_MODULES = {
    "arm64": (
        "virtio_blk virtio_pci virtio_mmio ext4 crc32c_generic mmc_block sdhci_esdhc_imx "
        "usb_storage uas xhci_pci xhci_plat_hcd nvme"
    ),
}
#: host tools the hooks below run natively (tools/bootstrap.sh installs them)
HOST_TOOLS = ("openssl", "sed", "find", "readlink")

INITRD_HOOK = 'chroot "$1" update-initramfs -c -k all'
UPDATE_CA = "/usr/sbin/update-ca-certificates"
# Before the --include packages (ca-certificates among them) are unpacked and configured.
CA_DIVERT_HOOK = (
    f'chroot "$1" dpkg-divert --quiet --local --rename --add {UPDATE_CA} && '
    f'printf "#!/bin/sh\\nexit 0\\n" > "$1{UPDATE_CA}" && chmod 755 "$1{UPDATE_CA}"'
)
# After: the real script back (the diversion removed), then CA_RUN.
CA_UNDIVERT = (
    f'rm -f "$1{UPDATE_CA}" && '
    f'chroot "$1" dpkg-divert --quiet --local --rename --remove {UPDATE_CA}'
)
# The package's script run by the host's sh on the tree $1; the links it makes to
# "$1/usr/share/..." then point to "/usr/share/...", as in the emulated run.
CA_RUN = (
    f'if [ -e "$1{UPDATE_CA}" ]; then '
    f'sh "$1{UPDATE_CA}" --certsconf "$1/etc/ca-certificates.conf" '
    '--certsdir "$1/usr/share/ca-certificates" '
    '--localcertsdir "$1/usr/local/share/ca-certificates" '
    '--etccertsdir "$1/etc/ssl/certs" --hooksdir "" >/dev/null && '
    'find "$1/etc/ssl/certs" -type l | while read -r link; do '
    'target=$(readlink "$link"); case "$target" in "$1"/*) ln -sfn "${target#"$1"}" "$link";; '
    "esac; done && "
    'if [ -n "$(ls -A "$1/etc/ca-certificates/update.d" 2>/dev/null)" ]; then '
    f'chroot "$1" {UPDATE_CA}; fi; fi'
)
CA_NATIVE_HOOK = f"{CA_UNDIVERT} && {CA_RUN}"


def arch_options(arch: str) -> list[str]:
    """mmdebstrap options for an ``arch`` base; none for a base that needs no emulation."""
    modules = INITRD_MODULES.get(arch)
    if modules is None:
        return []
    lines = "\\n".join(modules.split())
    # modules.d, not /etc/initramfs-tools/modules: that is a conffile of initramfs-tools
    initrd_modules = (
        'mkdir -p "$1/usr/share/initramfs-tools/modules.d" && '
        'printf "MODULES=list\\n" > "$1/etc/initramfs-tools/conf.d/edgekiln-modules.conf" && '
        f'printf "{lines}\\n" > "$1/usr/share/initramfs-tools/modules.d/edgekiln"'
    )
    return [
        f"--hook-dir={MERGED_USR_HOOKS}",
        "--dpkgopt=force-unsafe-io",
        f"--essential-hook={CA_DIVERT_HOOK}",
        f"--customize-hook={CA_NATIVE_HOOK}",
        f"--customize-hook={INITRD_HOOK}",
        f"--setup-hook={initrd_modules}",
    ]


def arch_env(arch: str) -> dict[str, str]:
    """Environment of mmdebstrap (and so of the maintainer scripts) for an ``arch`` base."""
    return dict(FOREIGN_ENV) if arch in INITRD_MODULES else {}
