"""Jetson (L4T) images: rootfs A/B slot images for NVIDIA's flashing tools, from the user's root.

NVIDIA's sample root filesystem (``Tegra_Linux_Sample-Root-Filesystem_<release>.tbz2``) may not
be redistributed, so the recipe names the user's copy in ``rootfs.tarball`` and the builder never
downloads it. L4T owns the boot chain (MB1/MB2, UEFI, L4TLauncher reading
``/boot/extlinux/extlinux.conf`` from the chosen slot) and the rootfs A/B switch
(``ROOTFS_AB=1``, ``nvbootctrl -t rootfs``), so there is no boot partition and no disk image
here: the outputs are what ``flash.sh`` / ``l4t_initrd_flash.sh`` write into the ``APP`` and
``APP_b`` partitions, plus our data partition (image/build/README.md says where each goes).

==========  ================================================================================
stage       output (``<name>`` = product-target-version)
==========  ================================================================================
base        the tarball extracted (cached by its digest); must be an L4T root
runtime     the arm64 frozen runtime (image.freeze; ``--runtime`` for a TensorRT one)
slot        ``<name>.rootfs_a.img``: journal-less ext4 (docs/decisions.md §1) of the L4T root +
            our overlay + runtime + models; extlinux.conf made slot-independent
            (root and read-only flags below); ``<name>.rootfs_b.img``: the same bytes
data        ``<name>.data.img``: the data partition (ext4 with journal)
manifest    ``<name>.manifest.json`` (+ ``.sig``): layout ``l4t``, each file's digest
bundle      ``<name>.bundle``: the full update bundle of this version
==========  ================================================================================
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.fsutil import atomic_write_bytes
from image import cache
from image.build import fs, glibc, rootfs
from image.build.pipeline import Pipeline
from image.errors import BuildError
from image.recipe import LoadedRecipe, canonical_json

if TYPE_CHECKING:
    from image.build.report import BuildReport

L4T_FORMAT = 1
#: Files every L4T root has (NVIDIA's sample root and ours); a tarball without them is refused.
L4T_MARKERS = ("etc/nv_tegra_release", "boot/extlinux/extlinux.conf", "usr/sbin/nvbootctrl")
#: NVIDIA's partition names for rootfs slots A and B (flash layout XML, ROOTFS_AB=1).
PARTITIONS = {"rootfs_a": "APP", "rootfs_b": "APP_b"}
#: Kernel arguments our slots need on top of L4T's ${cbootargs} (see render_extlinux).
SLOT_ARGS = "ro rootflags=noload rootfstype=ext4 rootwait panic=10"

# Our udev rule (61-edgekiln-boot-disk.rules) links partitions by their GPT names; L4T names the
# slots APP and APP_b. Same helper, same boot-disk check.
UDEV_RULE = """\
# edgekiln on L4T: NVIDIA's rootfs slots APP / APP_b (flashed with ROOTFS_AB=1) are the device's
# rootfs_a / rootfs_b, linked only on the disk that holds / (as 61-edgekiln-boot-disk.rules).
ACTION=="remove", GOTO="edgekiln_l4t_end"
SUBSYSTEM!="block", GOTO="edgekiln_l4t_end"
ENV{DEVTYPE}!="partition", GOTO="edgekiln_l4t_end"
ENV{ID_PART_ENTRY_NAME}=="APP", PROGRAM=="/usr/lib/edgekiln/on-boot-disk %k", SYMLINK+="disk/edgekiln/rootfs_a"
ENV{ID_PART_ENTRY_NAME}=="APP_b", PROGRAM=="/usr/lib/edgekiln/on-boot-disk %k", SYMLINK+="disk/edgekiln/rootfs_b"
LABEL="edgekiln_l4t_end"
"""  # noqa: E501 (udev rules are one line each)
# L4T puts no edgekiln.trial=1 on the command line: the deadline runs on every boot and is a
# no-op on a committed slot (appliance slots deadline exits 0).
DEADLINE_DROPIN = """\
# edgekiln on L4T: no edgekiln.trial=1 from the loader; run on every boot (no-op when committed).
[Unit]
ConditionKernelCommandLine=
"""

#: ``kiln build --plan`` for an L4T recipe: the stages and what each does.
PLAN = (
    ("base", "rootfs.tarball extracted (the user's L4T root, never downloaded), cached"),
    ("runtime", "arm64 frozen runtime (image.freeze; --runtime for a TensorRT one)"),
    ("slot", "ext4 without journal: L4T root + overlay + runtime + models, extlinux.conf"),
    ("data", "ext4 with journal"),
    ("disk", "<name>.rootfs_a.img (APP), .rootfs_b.img (APP_b), .data.img: no disk image"),
    ("manifest", "layout l4t, each file's digest, versions; signed"),
    ("bundle", "full update bundle of the same version"),
)


class L4TError(BuildError):
    """The L4T root (recipe field, tarball or its content) cannot make a Jetson image."""


def check_recipe(loaded: LoadedRecipe) -> Path:
    """The L4T tarball the recipe names; refused (naming recipe and field) when missing."""
    r = loaded.recipe
    if not r.rootfs.tarball:
        raise L4TError(
            f"{loaded.path}: rootfs.tarball is not set: target {r.target.name} (loader l4t) is "
            "built from NVIDIA's L4T sample root filesystem, which edgekiln never downloads "
            "(its licence forbids redistribution); download "
            "Tegra_Linux_Sample-Root-Filesystem_<release>.tbz2 for your JetPack from NVIDIA "
            'and set rootfs.tarball = "/path/to/it.tbz2" in the recipe'
        )
    tarball = loaded.resolve(r.rootfs.tarball)
    if not tarball.is_file():
        raise L4TError(
            f"{loaded.path}: rootfs.tarball: {tarball} does not exist; point it at NVIDIA's "
            "Tegra_Linux_Sample-Root-Filesystem_<release>.tbz2"
        )
    return tarball


def check_root(root: Path, tarball: str) -> str:
    """The L4T release of an extracted root (``/etc/nv_tegra_release``); refuse a non-L4T root."""
    missing = [m for m in L4T_MARKERS if not (root / m).is_file()]
    if missing:
        raise L4TError(
            f"rootfs.tarball {tarball} is not an L4T root filesystem: no /{', /'.join(missing)}; "
            "use NVIDIA's Tegra_Linux_Sample-Root-Filesystem_<release>.tbz2 (after "
            "apply_binaries.sh, whose files the flashing tools expect in the root)"
        )
    first = (root / "etc/nv_tegra_release").read_text(errors="replace").splitlines()
    return first[0].lstrip("# ").strip() if first else ""


def render_extlinux(original: str) -> str:
    """extlinux.conf for a slot that may be written into APP or APP_b.

    Every ``APPEND`` keeps L4T's ``${cbootargs}`` (UEFI's arguments for the slot it chose) and
    loses the ``root=``/``rw``/``ro`` that flash.sh wrote for one partition (one image serves
    both slots: an update is written byte-exact and verified against its signed digest);
    :data:`SLOT_ARGS` mount the slot read-only without journal replay (docs/decisions.md §1).
    """
    out, appends = [], 0
    for line in original.splitlines():
        stripped = line.strip()
        if stripped.upper().startswith("APPEND"):
            appends += 1
            indent = line[: len(line) - len(line.lstrip())]
            words = stripped.split()[1:]
            keep = [w for w in words if not (w.startswith("root=") or w in ("rw", "ro"))]
            if "${cbootargs}" not in keep:
                keep.insert(0, "${cbootargs}")
            out.append(f"{indent}APPEND {' '.join([*keep, SLOT_ARGS])}")
            continue
        out.append(line)
    if not appends:
        raise L4TError(
            "/boot/extlinux/extlinux.conf of the L4T root has no APPEND line; "
            "use the extlinux.conf of NVIDIA's sample root filesystem"
        )
    return "\n".join(out) + "\n"


def finish_root(tree: Path) -> None:
    """The L4T part of the overlay: extlinux.conf, the APP/APP_b udev links, the deadline."""
    conf = tree / "boot/extlinux/extlinux.conf"
    text = render_extlinux(conf.read_text())
    conf.unlink()  # hard-linked to the cached base: never write through the link
    conf.write_text(text)
    rules = tree / "usr/lib/udev/rules.d/61-edgekiln-l4t-slots.rules"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(UDEV_RULE)
    for unit in ("edgekiln-trial-deadline.timer", "edgekiln-trial-deadline.service"):
        dropin = tree / f"etc/systemd/system/{unit}.d/50-edgekiln-l4t.conf"
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(DEADLINE_DROPIN)


def code_key() -> str:
    """Digest of this module: its overlay decides the slot's bytes."""
    return rootfs.file_digest(Path(__file__))


# -- the build -----------------------------------------------------------------------------------


class L4TPipeline(Pipeline):
    """The pipeline of a ``loader = "l4t"`` recipe: L4T's own boot chain, no disk image."""

    link_kernel = False  # L4T boots /boot/Image through extlinux.conf

    def slot_key_extra(self) -> str:
        return code_key()

    def finish_root(self, tree: Path) -> None:
        finish_root(tree)

    def stage_slot(self, base: rootfs.BaseRoot, runtime: Path, runtime_digest: str) -> Path:
        # The runtime is frozen in a Debian 12 root; the user's L4T root may have an older glibc.
        glibc.check(base.root, runtime, f"the L4T root ({self.loaded.recipe.rootfs.tarball})")
        return super().stage_slot(base, runtime, runtime_digest)

    def run(self) -> BuildReport:
        with cache.leases():
            return build(self)


def build(pipe: Pipeline) -> BuildReport:
    """Run the L4T stages for ``pipe``'s recipe (:meth:`L4TPipeline.run`)."""
    from image.build.identity import image_name

    t0 = time.monotonic()
    tarball = check_recipe(pipe.loaded)
    pipe.outdir.mkdir(parents=True, exist_ok=True)
    base = pipe.stage_base()
    pipe.components["l4t"] = check_root(base.root, str(tarball))
    modules = sorted(p.name for p in (base.root / "lib/modules").glob("*-tegra*"))
    pipe.components["kernel"] = modules[-1] if modules else ""  # L4T's kernel: /boot/Image
    slot = pipe.stage_runtime_and_slot(base)
    data = pipe.stage_data()
    name = image_name(pipe.loaded)
    files = {
        "rootfs_a": pipe.outdir / f"{name}.rootfs_a.img",
        "rootfs_b": pipe.outdir / f"{name}.rootfs_b.img",
        "data": pipe.outdir / f"{name}.data.img",
    }
    start = pipe._stage("disk", "L4T slot images (APP, APP_b) and data")
    for part, out in files.items():
        src = data if part == "data" else slot
        out.unlink(missing_ok=True)
        fs.run_tool(["cp", "--sparse=always", "--reflink=auto", str(src), str(out)])
        pipe.report.outputs[part] = str(out)
        digest = (src.parent / "digest").read_text().strip()
        pipe.partitions[part] = {
            "file": out.name,
            "size": out.stat().st_size,
            "sha256": digest,
            "l4t_partition": PARTITIONS.get(part, "data"),
        }
    pipe._done("disk", start, cached=False, detail="no disk image: L4T's flash tools write these")
    stage_manifest(pipe, name)
    pipe.stage_bundle(slot)
    pipe.report.seconds = round(time.monotonic() - t0, 2)
    atomic_write_bytes(pipe.outdir / "build-report.json", pipe.report.to_json())
    atomic_write_bytes(pipe.outdir / "build-report.txt", pipe.report.summary().encode())
    return pipe.report


def manifest_body(pipe: Pipeline) -> bytes:
    """The L4T manifest's canonical bytes: what the signature covers."""
    from image.build.identity import IMAGE_FORMAT

    r = pipe.recipe
    doc: dict[str, Any] = {
        "format": IMAGE_FORMAT,
        "layout": "l4t",
        "l4t_format": L4T_FORMAT,
        "product": r.product,
        "version": r.version,
        "security_version": r.security_version,
        "target": r.target.name,
        "arch": r.target.arch,
        "recipe_digest": pipe.loaded.digest,
        "partitions": pipe.partitions,
        "components": pipe.components,
        "epoch": pipe.epoch,
    }
    return canonical_json(doc)


def stage_manifest(pipe: Pipeline, name: str) -> Path:
    start = pipe._stage("manifest", "image manifest (L4T layout)")
    return pipe.write_manifest(pipe.outdir / f"{name}.manifest.json", manifest_body(pipe), start)
