"""The root filesystem tree: a cached Debian base, then the edgekiln overlay on a copy of it.

The base comes from ``mmdebstrap`` (Debian ``suite``, ``variant``, the recipe's packages) or from
a supplied tarball, and is cached under ``<cache>/base/<key>/root`` where the key hashes every
input (docs/decisions.md §11: the cached base is one of the inputs of a reproducible build).
Each build hard-links the base into a scratch tree (``cp -al``: fast, no extra space) and adds
the overlay: the frozen runtime, the model packages, systemd units, fstab, device config and
keyring. Overlay writes always unlink first, so the cached base is never modified through a link.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

from image import cache
from image.build.binfmt import ensure_binfmt
from image.build.foreign_base import (
    HOST_TOOLS,
    INITRD_MODULES,
    MERGED_USR_HOOKS,
    arch_env,
    arch_options,
)
from image.build.fs import ToolError, run_tool
from image.errors import BuildError
from image.recipe import LoadedRecipe, canonical_json

log = logging.getLogger(__name__)

KEEP_BASES = 3  # Debian bases kept in the cache (~600 MiB each): amd64, intel-openvino, arm64
BASE_FORMAT = 1  # bump when the hooks below change what a base contains
OVERLAY_DIR = Path(__file__).with_name("overlay")
APP_DIR = "opt/edgekiln/appliance"
MODELS_DIR = "opt/edgekiln/models"
CONFIG_DIR = "etc/edgekiln"
FAULT_MARKER_TEXT = (
    b"A test image: the LAN API may stop the agent for the watchdog test "
    b"(recipe [lan] fault_injection; appliance/api/faults.py).\n"
)

# Run by mmdebstrap before packages are installed: the initrd is built with zstd.
SETUP_HOOK = (
    'mkdir -p "$1/etc/initramfs-tools/conf.d" && '
    'printf "COMPRESS=zstd\\n" > "$1/etc/initramfs-tools/conf.d/edgekiln.conf"'
)
# After installation: no package caches or lists in the image.
CUSTOMIZE_HOOK = (
    'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/* '
    '"$1"/var/log/*.log "$1"/var/log/apt/* "$1"/etc/machine-id; : > "$1/etc/machine-id"'
)
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
)

# systemd units enabled in the image: (unit, the .wants directory it goes into).
ENABLED_UNITS = (
    ("edgekiln-agent.service", "multi-user.target.wants"),
    ("edgekiln-persist.service", "sysinit.target.wants"),
    # Also pulled in by the agent unit; enabled on its own so that it is queued even when the
    # agent unit itself is broken in the tried slot (it only arms on edgekiln.trial=1 boots).
    ("edgekiln-trial-deadline.timer", "sysinit.target.wants"),
    # Its service runs only where the recipe has an [update] table (update.json in the slot).
    ("edgekiln-update.timer", "timers.target.wants"),
    ("systemd-networkd.service", "multi-user.target.wants"),
    ("systemd-networkd.socket", "sockets.target.wants"),
    ("systemd-repart.service", "sysinit.target.wants"),
)


class BaseRootError(BuildError):
    """The base root filesystem could not be made or is unusable."""


@dataclass(frozen=True)
class BaseRoot:
    """A cached base tree and its content key."""

    root: Path
    key: str
    cached: bool


@dataclass(frozen=True)
class OverlayConfig:
    """Everything the overlay renders into the tree besides files copied in."""

    watchdog_sec: int
    runtime_watchdog_sec: int
    slots_spec: str  # the agent's loader (appliance.slots.config), e.g. grub:/boot/efi
    device_json: bytes
    keyring: bytes | None
    telemetry_json: bytes = b'{"format": 1}\n'  # the recipe's [telemetry] (device_files.py)
    update: tuple[bytes, bytes] | None = None  # update.json, the channel's TUF root.json
    poll_interval_s: int = 6 * 3600
    poll_jitter_s: int = 1800
    lan_api: bool = False  # recipe [lan]: enable edgekiln-api.service
    lan_interface: str = "auto"
    lan_port: int = 8443
    #: recipe [lan] fault_injection (test profile only): the marker appliance/api/faults.py reads
    fault_injection: bool = False
    #: files the loader needs in the slot (e.g. etc/fw_env.config): path relative to / -> bytes
    files: tuple[tuple[str, bytes], ...] = ()
    #: also an uncompressed /boot/Image (U-Boot's booti loads no compressed kernel by itself)
    kernel_image: bool = False
    #: a device tree of the kernel package (e.g. freescale/imx8mq-phanbell.dtb) as /boot/dtb
    dtb: str | None = None


def file_digest(path: Path) -> str:
    """sha256 of one file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over the sorted (path, mode, link target or content digest) of a tree."""
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(
            [*files, *(d for d in dirs if os.path.islink(os.path.join(dirpath, d)))]
        ):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            what = "link:" + os.readlink(path) if path.is_symlink() else file_digest(path)
            h.update(f"{rel}\0{st.st_mode:o}\0{what}\n".encode())
    return h.hexdigest()


def base_key(loaded: LoadedRecipe) -> str:
    """Content key of the base tree: every input that decides its bytes."""
    r = loaded.recipe
    inputs = {
        "format": BASE_FORMAT,
        "arch": r.target.arch,
        "suite": r.rootfs.suite,
        "mirror": r.rootfs.mirror,
        "variant": r.rootfs.variant,
        "components": r.rootfs.components,
        "packages": sorted({*r.rootfs.packages, *r.rootfs.extra_packages}),
        "hooks": [
            SETUP_HOOK,
            CUSTOMIZE_HOOK,
            *DPKG_EXCLUDES,
            *arch_options(r.target.arch),
            *(f"env:{k}={v}" for k, v in sorted(arch_env(r.target.arch).items())),
        ],
        "tarball": file_digest(loaded.resolve(r.rootfs.tarball)) if r.rootfs.tarball else None,
    }
    return hashlib.sha256(canonical_json(inputs)).hexdigest()[:32]


def ensure_base(loaded: LoadedRecipe, cache_dir: Path) -> BaseRoot:
    """The cached base tree for this recipe, bootstrapped (or extracted) on a miss."""
    key = base_key(loaded)
    slot = cache_dir / "base" / key
    root = slot / "root"
    # Another build of the same base waits here and then finds it complete (image/cache.py).
    with cache.filling(slot) as hit:
        if hit:
            return BaseRoot(root, key, cached=True)
        # Not tempfile.TemporaryDirectory: its cleanup would walk into mounts an interrupted
        # mmdebstrap leaves behind; cache.remove_tree unmounts them first.
        tmp = cache.scratch(slot)
        try:
            scratch = tmp / "root"
            r = loaded.recipe
            if r.rootfs.tarball:
                scratch.mkdir()
                tarball = loaded.resolve(r.rootfs.tarball)
                log.info("extracting base tarball %s", tarball)
                run_tool(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(scratch)])
            else:
                _bootstrap(loaded, scratch)
            (tmp / "complete").write_text(key + "\n")
            cache.remove_tree(slot)  # a broken earlier attempt
            tmp.rename(slot)
        finally:
            cache.remove_tree(tmp)
    cache.prune(slot.parent, KEEP_BASES)
    return BaseRoot(root, key, cached=False)


def bootstrap_command(loaded: LoadedRecipe, dest: Path) -> list[str]:
    """The mmdebstrap command line for this recipe's base."""
    r = loaded.recipe
    packages = sorted({*r.rootfs.packages, *r.rootfs.extra_packages})
    mode = "root" if os.geteuid() == 0 else "unshare"
    argv = [
        "mmdebstrap", f"--mode={mode}", f"--variant={r.rootfs.variant}",
        f"--architectures={r.target.arch}", f"--components={','.join(r.rootfs.components)}",
        f"--include={','.join(packages)}",
    ]  # fmt: skip
    argv += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    argv += [f"--setup-hook={SETUP_HOOK}", f"--customize-hook={CUSTOMIZE_HOOK}"]
    argv += arch_options(r.target.arch)
    argv += [r.rootfs.suite, str(dest), r.rootfs.mirror]
    return argv


def _bootstrap(loaded: LoadedRecipe, dest: Path) -> None:
    # A foreign (arm64) root: mmdebstrap runs its maintainer scripts under qemu-user.
    arch = loaded.recipe.target.arch
    ensure_binfmt(arch)
    if arch in INITRD_MODULES and not MERGED_USR_HOOKS.is_dir():
        raise BaseRootError(
            f"{MERGED_USR_HOOKS} not found: the {arch} base of {loaded.path} sets up merged-/usr "
            "with mmdebstrap's own hook; install mmdebstrap >= 1.0 (Debian 12 has 1.3.5)"
        )
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if arch in INITRD_MODULES and missing:
        raise BaseRootError(
            f"{', '.join(missing)} not found: the {arch} base of {loaded.path} runs "
            "update-ca-certificates with the host's tools (image/build/foreign_base.py); "
            "install them (apt-get install openssl findutils sed coreutils)"
        )
    argv = bootstrap_command(loaded, dest)
    log.info("bootstrapping: %s", " ".join(argv))
    try:
        run_tool(argv, env=arch_env(arch))
    except ToolError as exc:
        raise BaseRootError(
            f"mmdebstrap failed for rootfs.packages of {loaded.path}: {exc} "
            "(check the package names and that the mirror is reachable)"
        ) from None


# --- the overlay ---------------------------------------------------------------------------


def overlay_digest() -> str:
    """Digest of image/build/overlay (units, fstab, scripts): part of the slot's cache key."""
    return tree_digest(OVERLAY_DIR)


def _replace(path: Path) -> Path:
    """Make ``path`` writable without touching a hard-linked base file: unlink it first."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write(root: Path, rel: str, data: bytes, mode: int = 0o644) -> None:
    path = _replace(root / rel)
    path.write_bytes(data)
    path.chmod(mode)


def _symlink(root: Path, rel: str, target: str) -> None:
    _replace(root / rel).symlink_to(target)


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy a directory tree into the image, owned by root."""
    _replace(dest)
    run_tool(["cp", "-a", "--reflink=auto", "--no-preserve=ownership", f"{src}/.", str(dest)])
    if os.geteuid() == 0:
        run_tool(["chown", "-R", "-h", "0:0", str(dest)])


def template_values(config: OverlayConfig) -> dict[str, str]:
    """What the overlay's ``*.in`` templates (units, drop-ins) are rendered with."""
    return {
        "watchdog_sec": str(config.watchdog_sec),
        "runtime_watchdog_sec": str(config.runtime_watchdog_sec),
        "slots_spec": config.slots_spec,
        "poll_interval_s": str(config.poll_interval_s),
        "poll_jitter_s": str(config.poll_jitter_s),
        # the first pass after boot: 5 min, or one poll interval when that is shorter
        "first_poll_s": str(min(300, config.poll_interval_s)),
        "lan_interface": config.lan_interface,
        "lan_port": str(config.lan_port),
    }


def assemble_root(
    base: Path,
    dest: Path,
    *,
    runtime: Path | None,
    models: dict[str, Path],
    config: OverlayConfig,
    link_kernel: bool = True,
) -> Path:
    """Hard-link ``base`` to ``dest`` and add the overlay; returns ``dest``.

    ``link_kernel=False`` for roots whose loader finds the kernel itself (L4T: extlinux.conf).
    """
    cache.remove_tree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_tool(["cp", "-al", str(base), str(dest)])
    _write_overlay(dest, config)
    for unit, wants in ENABLED_UNITS:
        source = "/etc/systemd/system" if unit.startswith("edgekiln-") else "/lib/systemd/system"
        _symlink(dest, f"etc/systemd/system/{wants}/{unit}", f"{source}/{unit}")
    if config.lan_api:
        unit = "edgekiln-api.service"
        _symlink(
            dest,
            f"etc/systemd/system/multi-user.target.wants/{unit}",
            f"/etc/systemd/system/{unit}",
        )
    # Mutable config on data (Decision 9); mount points on the read-only root.
    _symlink(dest, "etc/systemd/network", "/data/etc/systemd/network")
    for mount_point in ("data", "boot/efi"):
        (dest / mount_point).mkdir(parents=True, exist_ok=True)
    _write(dest, f"{CONFIG_DIR}/device.json", config.device_json)
    if config.fault_injection:
        _write(dest, f"{CONFIG_DIR}/fault-injection", FAULT_MARKER_TEXT)
    _write(dest, f"{CONFIG_DIR}/telemetry.json", config.telemetry_json)
    if config.keyring is not None:
        _write(dest, f"{CONFIG_DIR}/keyring.json", config.keyring)
    if config.update is not None:
        _write(dest, f"{CONFIG_DIR}/update.json", config.update[0])
        _write(dest, f"{CONFIG_DIR}/tuf-root.json", config.update[1])
    if runtime is not None:
        _copy_tree(runtime, dest / APP_DIR)
    for role, package in sorted(models.items()):
        _copy_tree(package, dest / MODELS_DIR / role)
    for rel, data in config.files:
        _write(dest, rel, data)
    if link_kernel:
        _link_kernel(dest)
    if config.kernel_image:
        _kernel_image(dest)
    if config.dtb:
        _link_dtb(dest, config.dtb)
    return dest


def _write_overlay(dest: Path, config: OverlayConfig) -> None:
    """The overlay's files into the root ``dest`` (``*.in`` filled from ``config``)."""
    values = template_values(config)
    for src in sorted(OVERLAY_DIR.rglob("*")):
        if src.is_dir():
            continue
        rel = src.relative_to(OVERLAY_DIR).as_posix()
        data = src.read_bytes()
        if rel.endswith(".in"):
            rel = rel[:-3]
            data = string.Template(data.decode()).substitute(values).encode()
        _write(dest, rel, data, 0o755 if os.access(src, os.X_OK) else 0o644)


def _link_dtb(root: Path, dtb: str) -> None:
    """``/boot/dtb``: a hard link to the kernel package's device tree ``dtb``."""
    version = kernel_version(root)
    source = root / "usr" / "lib" / f"linux-image-{version}" / dtb
    if not source.is_file() or ".." in Path(dtb).parts:
        raise BaseRootError(
            f"board.dtb {dtb!r}: no /usr/lib/linux-image-{version}/{dtb} in the base root; "
            "name a device tree of the kernel package (e.g. freescale/imx8mq-phanbell.dtb)"
        )
    os.link(source, _replace(root / "boot" / "dtb"))


def _kernel_image(root: Path) -> None:
    """``/boot/Image``: the kernel as ``booti`` loads it (Debian's arm64 vmlinuz may be gzip)."""
    vmlinuz = (root / "boot" / "vmlinuz").resolve()
    data = vmlinuz.read_bytes()
    compressed = data[:2] == b"\x1f\x8b"
    if compressed:
        import gzip

        data = gzip.decompress(data)
    if data[0x38:0x3C] != b"ARM\x64":
        raise BaseRootError(f"{vmlinuz} is not an arm64 kernel Image (no ARM\\x64 magic)")
    if compressed:
        _write(root, "boot/Image", data)
    else:  # a hard link: the same file, no second copy in the slot
        os.link(vmlinuz, _replace(root / "boot" / "Image"))


def _link_kernel(root: Path) -> None:
    """``/boot/vmlinuz`` and ``/boot/initrd.img`` (what grub.cfg loads from each slot)."""
    kernels = sorted(p.name for p in (root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BaseRootError(
            f"the base root has {len(kernels)} kernels in /boot ({', '.join(kernels) or 'none'}); "
            "exactly one is needed: add linux-image-<arch> to rootfs.extra_packages"
        )
    version = kernels[0].removeprefix("vmlinuz-")
    if not (root / "boot" / f"initrd.img-{version}").is_file():
        raise BaseRootError(
            f"no /boot/initrd.img-{version} in the base root: "
            "add initramfs-tools to rootfs.packages"
        )
    _symlink(root, "boot/vmlinuz", f"vmlinuz-{version}")
    _symlink(root, "boot/initrd.img", f"initrd.img-{version}")


def kernel_version(root: Path) -> str:
    """The kernel version of a base tree (for the manifest)."""
    kernels = sorted(p.name for p in (root / "boot").glob("vmlinuz-*"))
    return kernels[0].removeprefix("vmlinuz-") if kernels else ""
