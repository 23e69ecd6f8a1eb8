"""The build pipeline: plain stage functions over one validated recipe, cached by content hash.

Stages and what their cache key hashes (a change re-runs the stage and everything after it):

=========  ===============================================================================
base       suite, mirror, variant, components, packages, hooks (or the tarball's digest)
runtime    freeze's own key (appliance sources, installed versions, target), or --runtime
slot       base key, runtime digest, model package digests, overlay files, device config,
           keyring, slot size, UUID seed, epoch, builder code; with ``models.optimise`` the
           packages are first optimised for the target (image.model.stage, cached under
           model/ by package digest, target, options, optimiser code); with ``models.fuse``
           (default) each then gets the fused file of its target runtime's ONNX file
           (image.model.fuse_stage, cached under fused/ by package digest, file, fuse code),
           and the slot hashes those
boot       grub.cfg, grubenv, GRUB modules and version, ESP size and volume id
data       data tree, size, UUID seed, epoch
disk       always assembled (sparse dd, seconds), then .bmap and a zstd copy
manifest   partition digests, recipe digest, component versions (signed when a key is set)
bundle     the full update bundle of this version (appliance.bundle format, signed)
=========  ===============================================================================

A model-only change therefore re-runs slot, disk and manifest, and takes base, runtime, boot
and data from the cache.

``skip`` (``kiln build --skip compress,bundle``, for iterating on an image that is booted
raw) leaves out the outputs named in :data:`SKIPPABLE`; their stages are reported as skipped
and the output set is cached apart from the full one. The default builds everything.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.fsutil import atomic_write_bytes, atomic_writer
from image import cache
from image.build import boot, disk, fs, outputs_cache, rootfs
from image.build.device_files import (
    device_config,
    pipeline_config,
    telemetry_config,
    update_config,
)
from image.build.identity import (
    IMAGE_FORMAT,
    STAGES,
    build_epoch,
    code_digest,
    default_cache_dir,
    image_name,
    slot_fs_uuid,
    uuid_seed,
)
from image.build.identity import key as _key
from image.build.manifest import manifest_body, sign_manifest
from image.build.models import model_version, slot_models
from image.build.report import BuildReport, Observer, StageResult
from image.errors import BuildError
from image.recipe import MIB, LoadedRecipe

log = logging.getLogger(__name__)

#: Output stages ``skip`` may leave out: the zstd copy of the image (for flashing) and the
#: full update bundle. The raw image, its bmap and the manifest are always made.
SKIPPABLE = ("compress", "bundle")


class Pipeline:
    """Run the stages of one recipe into ``outdir`` with caches under ``cache_dir``."""

    def __init__(
        self,
        loaded: LoadedRecipe,
        outdir: Path,
        *,
        cache_dir: Path | None = None,
        runtime: Path | None = None,
        keyring: bytes | None = None,
        key: Ed25519PrivateKey | None = None,
        observer: Observer | None = None,
        compress_level: int = 3,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        unknown = sorted(skip - set(SKIPPABLE))
        if unknown:
            raise BuildError(
                f"cannot skip {', '.join(unknown)}: only {', '.join(SKIPPABLE)} can be skipped"
            )
        self.loaded = loaded
        self.recipe = loaded.recipe
        self.outdir = outdir
        self.cache = (cache_dir or default_cache_dir()).resolve()
        self.runtime_dir = runtime
        self.keyring = keyring
        self.key = key
        self.observer = observer or Observer()
        self.compress_level = compress_level
        self.skip = skip
        self.epoch = build_epoch()
        self.seed = uuid_seed(loaded)
        self.report = BuildReport(
            recipe=str(loaded.path),
            recipe_digest=loaded.digest,
            version=self.recipe.version,
            target=self.recipe.target.name,
        )
        self.components: dict[str, Any] = {}
        self.partitions: dict[str, Any] = {}
        self.model_detail = ""  # what slot_models() did (optimised variants), for the slot's line

    # -- helpers ------------------------------------------------------------------------------

    def _stage(self, name: str, what: str) -> float:
        self.observer.start(name, what)
        return time.monotonic()

    def _done(
        self,
        name: str,
        start: float,
        *,
        cached: bool,
        size: int = 0,
        key: str = "",
        detail: str = "",
    ) -> None:
        result = StageResult(name, cached, round(time.monotonic() - start, 2), size, key, detail)
        self.report.stages.append(result)
        self.observer.done(result)

    def _cached_file(
        self, kind: str, key: str, name: str
    ) -> AbstractContextManager[tuple[Path, Path | None]]:
        """``with``: (the file in the cache, where to write it on a miss; image/cache.py)."""
        return cache.cached_file(self.cache / kind / key, name, self.KEEP_ENTRIES)

    # -- hooks a loader's own pipeline overrides (image.build.l4t.L4TPipeline) -----------------

    link_kernel = True  # /vmlinuz and /initrd.img links in the slot (Debian's kernel)

    def slot_key_extra(self) -> str:
        """More inputs of the slot's cache key (the subclass's own slot code)."""
        return ""

    def finish_root(self, tree: Path) -> None:
        """Last changes to the assembled slot tree before it becomes ext4."""

    KEEP_ENTRIES = 4  # results kept per stage kind (slot images are the rootfs size each)

    # -- stages -------------------------------------------------------------------------------

    def run(self) -> BuildReport:
        """Run every stage; returns the report (also written to the output directory)."""
        t0 = time.monotonic()
        boot.self_check(self.loaded)
        self.outdir.mkdir(parents=True, exist_ok=True)
        # Leases: another build sharing the cache never prunes what this one still uses.
        with cache.leases():
            self._run_stages()
        self.report.seconds = round(time.monotonic() - t0, 2)
        atomic_write_bytes(self.outdir / "build-report.json", self.report.to_json())
        atomic_write_bytes(self.outdir / "build-report.txt", self.report.summary().encode())
        return self.report

    def _run_stages(self) -> None:
        slot = self.stage_runtime_and_slot(self.stage_base())
        esp = self.stage_boot()
        data = self.stage_data()
        cached = self.cache / "outputs" / self._outputs_key()
        with cache.filling(cached) as hit:
            if hit:
                self._restore_outputs(cached)
            else:
                image = self.stage_disk(esp, slot, data)
                self.stage_bmap(image)
                # The zstd image (a process) and the bundle (zstandard, no GIL): side by side.
                with ThreadPoolExecutor(max_workers=1) as pool:
                    compressed = pool.submit(self.stage_compress, image)
                    self.stage_manifest(image)
                    self.stage_bundle(slot)
                    compressed.result()
                self.report.stages.sort(key=lambda s: STAGES.index(s.name))
                self._store_outputs(cached)
        if not hit:
            cache.prune(cached.parent, self._KEEP_OUTPUTS)

    # -- the output files, cached as a whole ---------------------------------------------------

    def _outputs_key(self) -> str:
        """Everything the disk, bmap, compressed image, manifest and bundle depend on."""
        keys = {s.name: s.key for s in self.report.stages}
        p = self.recipe.partitions
        signer = ""
        if self.key is not None:
            from appliance.bundle.keyring import key_id_for
            from image.release.keys import raw_public

            signer = key_id_for(raw_public(self.key))
        return _key(
            IMAGE_FORMAT, keys["slot"], keys["boot"], keys["data"],
            [p.boot_mib, p.rootfs_mib, p.data_mib], self.recipe.target.arch, self.seed,
            self.compress_level, signer, self.loaded.digest, self.components, self.epoch,
            code_digest("disk.py", "manifest.py", "pipeline.py", "outputs_cache.py"),
            *([["skip", sorted(self.skip)]] if self.skip else []),
        )  # fmt: skip

    _KEEP_OUTPUTS = 3  # cached output sets kept (each about the compressed image x 3)

    def _store_outputs(self, cached: Path) -> None:
        """Cache the output files as one set (under ``cached``'s fill lock)."""
        outputs_cache.store(cached, self.report.outputs, self.report.stages, self.partitions)

    def _restore_outputs(self, cached: Path) -> None:
        """Copy a cached output set into the output directory; its stages report hits."""
        self.partitions, outputs, stages = outputs_cache.restore(cached, self.outdir, self.observer)
        self.report.outputs.update(outputs)
        self.report.stages.extend(stages)

    def stage_base(self) -> rootfs.BaseRoot:
        start = self._stage("base", f"Debian {self.recipe.rootfs.suite} base root")
        base = rootfs.ensure_base(self.loaded, self.cache)
        self.components["kernel"] = rootfs.kernel_version(base.root)
        self.components["base"] = base.key
        self._done(
            "base", start, cached=base.cached, key=base.key, detail=self.components["kernel"]
        )
        return base

    def stage_runtime(self, out: Path) -> tuple[Path, str]:
        """The frozen runtime, installed into ``out`` (a folder of this build's own)."""
        start = self._stage("runtime", f"frozen appliance runtime ({self.recipe.target.backend})")
        from image.freeze.runtime import freeze_runtime

        prebuilt = self.runtime_dir
        rt = freeze_runtime(self.loaded, out, cache_dir=self.cache / "freeze", prebuilt=prebuilt)
        # Only what the runtime is, not how it was obtained (frozen, cached or --runtime).
        self.components["runtime"] = {"digest": rt.digest, "backend": rt.backend}
        self._done(
            "runtime",
            start,
            cached=rt.cached or prebuilt is not None,
            size=rt.size.total_bytes,
            key=rt.digest[:32],
            detail=f"prebuilt {prebuilt}" if prebuilt else "",
        )
        return rt.path, rt.digest

    def stage_runtime_and_slot(self, base: rootfs.BaseRoot) -> Path:
        """The slot image: the runtime frozen into a scratch folder of this build's own, then
        the slot made from ``base`` and it (the scratch folder is removed either way)."""
        work = self.cache / "work"
        work.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="build-", dir=work))
        try:
            return self.stage_slot(base, *self.stage_runtime(scratch / "runtime"))
        finally:
            cache.remove_tree(scratch)

    def stage_slot(self, base: rootfs.BaseRoot, runtime: Path, runtime_digest: str) -> Path:
        start = self._stage("slot", "root filesystem slot (ext4, no journal)")
        models, self.model_detail = slot_models(
            self.loaded, self.cache, self.observer, self.components
        )
        model_digests = {role: rootfs.tree_digest(p) for role, p in models.items()}
        self.components["models"] = {role: model_version(p) for role, p in models.items()}
        config = rootfs.OverlayConfig(
            watchdog_sec=self.recipe.agent.watchdog_sec,
            runtime_watchdog_sec=self.recipe.agent.runtime_watchdog_sec,
            slots_spec=boot.slots_spec(self.loaded),
            device_json=device_config(self.loaded),
            telemetry_json=telemetry_config(self.loaded),
            keyring=self.keyring,
            update=update_config(self.loaded),
            poll_interval_s=self.recipe.update.poll_interval_s,
            poll_jitter_s=self.recipe.update.poll_jitter_s,
            lan_api=self.recipe.lan.api,
            lan_interface=self.recipe.lan.interface,
            lan_port=self.recipe.lan.port,
            fault_injection=self.recipe.lan.fault_injection,
            files=tuple(sorted(boot.slot_files(self.loaded).items())),
            kernel_image=self.recipe.target.loader == "u-boot",
            dtb=self.recipe.board.dtb,
        )
        key = _key(
            IMAGE_FORMAT, base.key, runtime_digest, model_digests,
            code_digest("fs.py", "rootfs.py", "pipeline.py", overlay=True),
            hashlib.sha256(config.device_json).hexdigest(), config.watchdog_sec,
            hashlib.sha256(config.telemetry_json).hexdigest(),
            config.runtime_watchdog_sec, hashlib.sha256(config.keyring or b"").hexdigest(),
            config.slots_spec, hashlib.sha256(b"".join(config.update or ())).hexdigest(),
            config.poll_interval_s, config.poll_jitter_s,
            config.lan_api, config.lan_interface, config.lan_port, config.fault_injection,
            [(path, hashlib.sha256(data).hexdigest()) for path, data in config.files],
            config.kernel_image, config.dtb,
            self.recipe.partitions.rootfs_mib, self.seed, self.epoch,
        )  # fmt: skip
        if extra := self.slot_key_extra():
            key = _key(key, extra)
        with self._cached_file("slot", key, "rootfs.ext4") as (path, write):
            if write is not None:
                tree = write.parent / "root"
                try:
                    rootfs.assemble_root(
                        base.root, tree, runtime=runtime, models=models, config=config,
                        link_kernel=self.link_kernel,
                    )  # fmt: skip
                    self.finish_root(tree)
                    fs.make_ext4(
                        tree, write, self.recipe.partitions.rootfs_mib,
                        slot_fs_uuid(self.loaded), self.epoch,
                    )  # fmt: skip
                finally:
                    cache.remove_tree(tree)
        self._done(
            "slot", start, cached=write is None, size=_allocated(path), key=key,
            detail=self.model_detail,
        )  # fmt: skip
        return path

    def stage_boot(self) -> Path:
        loader = self.recipe.target.loader
        what = (
            "U-Boot boot.scr, A/B env x2" if loader == "u-boot" else "GRUB EFI, grub.cfg, grubenv"
        )
        start = self._stage("boot", f"boot partition ({what})")
        size = self.recipe.partitions.boot_mib
        volume_id = int(fs.fs_uuid_for(self.seed, "boot").hex[:8], 16)
        key = _key(
            IMAGE_FORMAT,
            boot.boot_key(self.loaded),
            size,
            volume_id,
            self.epoch,
            code_digest("fs.py", "boot.py"),
        )
        with self._cached_file("boot", key, "boot.vfat") as (path, write):
            if write is not None:
                tree = write.parent / "esp"
                try:
                    boot.build_esp_tree(self.loaded, tree, self.epoch)
                    fs.make_vfat(tree, write, size, volume_id, self.epoch, label=boot.ESP_LABEL)
                finally:
                    shutil.rmtree(tree, ignore_errors=True)
        if self.recipe.board.bootloader:  # raw on the disk: part of the manifest and outputs key
            blob = self.loaded.resolve(self.recipe.board.bootloader)
            self.components["bootloader"] = {
                "file": blob.name,
                "offset": self.recipe.board.bootloader_offset_kib * 1024,
                "size": blob.stat().st_size,
                "sha256": rootfs.file_digest(blob),
            }
        self._done("boot", start, cached=write is None, size=_allocated(path), key=key)
        return path

    def stage_data(self) -> Path:
        start = self._stage("data", "data partition (ext4)")
        size = self.recipe.partitions.data_mib
        dirs = ("etc/systemd/network", "log", "edgekiln")
        pipeline = pipeline_config(self.loaded)
        key = _key(
            IMAGE_FORMAT, dirs, size, self.seed, self.epoch, code_digest("fs.py"),
            hashlib.sha256(pipeline).hexdigest(),
        )  # fmt: skip
        with self._cached_file("data", key, "data.ext4") as (path, write):
            if write is not None:
                tree = write.parent / "data"
                try:
                    for d in dirs:
                        (tree / d).mkdir(parents=True, exist_ok=True)
                    (tree / "edgekiln" / "pipeline.json").write_bytes(pipeline)
                    fs.make_ext4(
                        tree, write, size, fs.fs_uuid_for(self.seed, "data"), self.epoch,
                        label="data", journal=True, field="partitions.data_mib",
                    )  # fmt: skip
                finally:
                    shutil.rmtree(tree, ignore_errors=True)
        self._done("data", start, cached=write is None, size=_allocated(path), key=key)
        return path

    def stage_disk(self, esp: Path, slot: Path, data: Path) -> Path:
        start = self._stage("disk", "GPT disk image")
        p, board = self.recipe.partitions, self.recipe.board
        images = {"boot": esp, "rootfs_a": slot, "data": data}
        layout = disk.standard_layout(
            self.recipe.target.arch, p.boot_mib, p.rootfs_mib, p.data_mib, images
        )
        out = self.outdir / f"{image_name(self.loaded)}.img"
        table = disk.assemble_disk(out, layout, self.seed, board.first_partition_mib)
        if board.bootloader:
            disk.place_bootloader(
                out,
                self.loaded.resolve(board.bootloader),
                board.bootloader_offset_kib * 1024,
                board.first_partition_mib,
            )
        for part in table:
            source = images.get(part.name)
            digest = (source.parent / "digest").read_text().strip() if source else None
            self.partitions[part.name] = {
                "number": part.number,
                "start": part.start,
                "size": part.size,
                "uuid": part.uuid,
                "type": part.type_guid,
                "sha256": digest,  # of the whole partition; None: left empty (zeros)
            }
        self.report.outputs["image"] = str(out)
        self._done(
            "disk",
            start,
            cached=False,
            size=_allocated(out),
            detail=f"{out.stat().st_size / MIB:.0f} MiB apparent",
        )
        return out

    def stage_bmap(self, image: Path) -> Path:
        start = self._stage("bmap", "block map (.bmap)")
        bmap = disk.write_bmap(image, image.with_suffix(".bmap"))
        self.report.outputs["bmap"] = str(bmap)
        self._done("bmap", start, cached=False, size=bmap.stat().st_size)
        return bmap

    def _skipped(self, name: str, start: float) -> bool:
        """Report stage ``name`` as skipped when ``skip`` names it."""
        if name not in self.skip:
            return False
        self._done(name, start, cached=False, detail="skipped (--skip)")
        return True

    def stage_compress(self, image: Path) -> Path | None:
        start = self._stage("compress", "compressed image (zstd)")
        if self._skipped("compress", start):
            return None
        out = disk.compress(image, image.with_name(image.name + ".zst"), self.compress_level)
        self.report.outputs["compressed"] = str(out)
        self._done("compress", start, cached=False, size=out.stat().st_size)
        return out

    def stage_manifest(self, image: Path) -> Path:
        start = self._stage("manifest", "image manifest")
        body = manifest_body(
            self.loaded, image, self.partitions, self.components, self.epoch, IMAGE_FORMAT
        )
        return self.write_manifest(
            self.outdir / f"{image_name(self.loaded)}.manifest.json", body, start
        )

    def write_manifest(self, out: Path, body: bytes, start: float) -> Path:
        """Write the manifest ``body`` to ``out`` and sign it when a key is set (every layout)."""
        atomic_write_bytes(out, body)
        self.report.outputs["manifest"] = str(out)
        detail = "unsigned (no signing key)"
        if self.key is not None:
            sig, key_id = sign_manifest(out, body, self.key)
            self.report.outputs["signature"] = str(sig)
            detail = f"signed by {key_id}"
        self._done("manifest", start, cached=False, size=len(body), detail=detail)
        return out

    def stage_bundle(self, slot: Path) -> Path | None:
        """The full update bundle of this version (appliance.bundle format), from the slot."""
        start = self._stage("bundle", "full update bundle")
        if self._skipped("bundle", start):
            return None
        if self.key is None:
            self._done("bundle", start, cached=False, detail="skipped (no signing key)")
            return None
        from appliance.bundle.writer import PayloadSource, write_bundle

        r = self.recipe
        out = self.outdir / f"{image_name(self.loaded)}.bundle"
        with atomic_writer(out) as handle:
            write_bundle(
                handle, key=self.key, product=r.product, targets=[r.target.name],
                version=r.version, security_version=r.security_version, created=self.epoch,
                payloads=[PayloadSource.slot_image(slot)], zstd_level=self.compress_level,
                spool_dir=self.outdir,
            )  # fmt: skip
        self.report.outputs["bundle"] = str(out)
        self._done("bundle", start, cached=False, size=out.stat().st_size)
        return out


def _allocated(path: Path) -> int:
    """Bytes a (sparse) file really occupies."""
    return path.stat().st_blocks * 512
