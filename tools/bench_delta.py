#!/usr/bin/env python3
"""Benchmark: our delta bundle (ekdelta2) against xdelta3, zstd --patch-from (and bsdiff4).

Three kinds of change, each on real journal-less ext4 slot images made with the builder's own
reproducible ``image.build.fs.make_ext4`` (one file-system UUID for every version, as
``kiln build`` gives a product's slots), from a Debian bookworm minbase + python3 root
(debootstrap once, cached) with numpy 2.1.3 unpacked into dist-packages and a 5 MiB model:

  package  v1 + one more Debian package (jq, libjq1, libonig5: ``dpkg -x`` + its dpkg status)
  wheel    v1 with numpy 2.1.3 -> 2.2.1 (the wheel's files replaced)
  model    v1 with the 5 MiB model replaced by other random (incompressible) bytes
  release  package and model together (a release's typical change; not in the default set)
  (and the model swap again on a ~2x larger image, for apply RSS flat in image size)

Ours is run through the CLIs, as a release manager and a device run them:
``kiln bundle --slot-image NEW --delta-from OLD --key K --chunk-size N ...`` with its other
defaults (N: 1 MiB, the default, unless ``--chunk-size`` asks for more sizes), and
``appliance install D.bundle --loader file:S --booted A --slot A=OLD --slot B=OUT ...``
(signature, policy, the base's sha256, every wire and rebuilt chunk's sha256, O_DIRECT write,
the read-back of the slot). Printed side by side: delta size (and % of the new image at
zstd -19), encode time and peak RSS, apply wall and CPU time (medians), apply peak RSS
(``ru_maxrss`` of the child: what ``/usr/bin/time -v`` reports), and per-round ratios of ours to
``xdelta3 -d`` and to ``xdelta3 -d`` + ``sync`` (each round alternates the methods, so each
sees the same background load).

    .venv/bin/python tools/bench_delta.py                     # the three pairs, 3 rounds
    .venv/bin/python tools/bench_delta.py --pairs model --rounds 5 --no-zstd   # quick
    .venv/bin/python tools/bench_delta.py --bsdiff model      # bsdiff4 too (GiBs, minutes)
    .venv/bin/python tools/bench_delta.py --chunk-size 1,2,4 --no-zstd   # ours at 3 chunk sizes

``--chunk-size`` (MiB, or bytes with a ``k``/``m`` suffix or above 4095; a comma list or
repeated) encodes ours once per image chunk size (``kiln bundle --chunk-size``) and applies each
in the same alternating rounds as xdelta3, so every size is compared with the same baselines
and with the first size listed (default: what ``kiln bundle --delta-from`` writes).

Encodes are cached in CACHE/encoded (``$EDGEKILN_BENCH_CACHE``, default
~/.cache/edgekiln-delta), keyed by command, inputs and the encoder's sources (a change to a
device-side module such as delta_apply.py alone does not re-encode; ``--fresh`` re-encodes);
every apply is measured again in each run. Apply outputs are deleted as soon as they are checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MIB = 1 << 20
CACHE = Path(os.environ.get("EDGEKILN_BENCH_CACHE", Path.home() / ".cache" / "edgekiln-delta"))
EPOCH = 1_750_000_000
NUMPY = {"old": "2.1.3", "new": "2.2.1"}
DEBS = ("jq", "libjq1", "libonig5")  # jq and what it depends on beyond the minbase root
ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent  # the venv's console scripts: kiln, appliance
SITE = "usr/lib/python3/dist-packages"
MODEL = 5 * MIB
TASKSET: list[str] = []  # --cpus: every apply runs under ``taskset -c LIST``
PASSPHRASE = "bench-passphrase"  # noqa: S105 (a throwaway bench key)
IDENTITY = ["--product", "bench", "--target", "generic-x86-64", "--security-version", "1"]


def _run(argv: list[str], **kw: object) -> None:
    subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def base_root() -> Path:
    """A cached Debian bookworm minbase + python3 root (debootstrap once, ~2 min)."""
    root = CACHE / "base-root"
    if not (root / "usr/bin/python3").exists():
        shutil.rmtree(root, ignore_errors=True)
        _run(["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(root),
              "http://deb.debian.org/debian"])  # fmt: skip
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    return root


def numpy_wheel(version: str) -> Path:
    """The cp311 manylinux numpy wheel (pip download, cached)."""
    wheels = CACHE / "wheels"
    found = sorted(wheels.glob(f"numpy-{version}-cp311-*.whl"))
    if not found:
        _run([PY, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
              "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64",
              f"numpy=={version}", "-d", str(wheels)])  # fmt: skip
        found = sorted(wheels.glob(f"numpy-{version}-cp311-*.whl"))
    return found[0]


def debs() -> list[Path]:
    """The package's .deb files (``apt-get download``, cached)."""
    folder = CACHE / "debs"
    folder.mkdir(parents=True, exist_ok=True)
    if not all(list(folder.glob(f"{name}_*.deb")) for name in DEBS):
        _run(["apt-get", "download", *DEBS], cwd=folder)
    return sorted(p for name in DEBS for p in folder.glob(f"{name}_*.deb"))


def model_bytes(seed: int) -> bytes:
    """A 5 MiB 'model' of random (incompressible) bytes."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, MODEL, dtype=np.uint8).tobytes()


def add_package(dest: Path) -> None:
    """Unpack the .debs into ``dest`` and list them in its dpkg status, as apt would."""
    status = dest / "var/lib/dpkg/status"
    for deb in debs():
        _run(["dpkg", "-x", str(deb), str(dest)])
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True)
        with open(status, "ab") as f:
            f.write(b"\n" + control.stdout.replace(b"Package:", b"Package:", 1).rstrip(b"\n"))
            f.write(b"\nStatus: install ok installed\n")


def make_tree(dest: Path, kind: str, extra: bool) -> None:
    """Copy the base root and add numpy, the model, a version file (and the change ``kind``)."""
    shutil.rmtree(dest, ignore_errors=True)
    _run(["cp", "-a", str(base_root()), str(dest)])
    with zipfile.ZipFile(numpy_wheel(NUMPY["new" if kind == "wheel" else "old"])) as whl:
        whl.extractall(dest / SITE)
    models = dest / "opt/edgekiln/models/detector"
    models.mkdir(parents=True)
    (models / "model.onnx").write_bytes(model_bytes(2 if kind in ("model", "release") else 1))
    (dest / "etc/edgekiln").mkdir(parents=True, exist_ok=True)
    (dest / "etc/edgekiln/version").write_text("1.0.0\n" if kind == "v1" else "2.0.0\n")
    if kind in ("package", "release"):
        add_package(dest)
    if extra:  # identical in both versions: only makes the image larger
        _run(["cp", "-a", str(base_root() / "usr"), str(dest / "opt/extra-usr")])
        with zipfile.ZipFile(numpy_wheel(NUMPY["old"])) as whl:
            whl.extractall(dest / "opt/extra-numpy")


def make_image(kind: str, extra: bool = False) -> Path:
    """The cached ext4 slot image for ``kind`` (v1, package, wheel, model, release)."""
    from image.build.fs import fs_uuid_for, make_ext4

    out = CACHE / "images" / f"{'L-' if extra else ''}{kind}.ext4"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        tree = Path(tmp) / "root"
        make_tree(tree, kind, extra)
        size_mib = 640 if extra else 384
        # One UUID for every version, as kiln build gives a product's slot file systems.
        make_ext4(tree, out, size_mib, fs_uuid_for("bench", "generic-x86-64", "rootfs"), EPOCH)
    return out


def measure(argv: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + sys) and peak RSS bytes of ``argv`` as a fresh child.

    A small probe process runs ``argv`` as its only child and reports the child's rusage, so
    the RSS is the command's own (``ru_maxrss`` of the child, as ``/usr/bin/time -v`` shows).
    """
    probe = (
        "import resource,subprocess,sys,time;t=time.perf_counter();"
        "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL);w=time.perf_counter()-t;"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(w, r.ru_utime + r.ru_stime, r.ru_maxrss)"
    )
    done = subprocess.run(
        [PY, "-c", probe, *argv], check=False, capture_output=True, text=True, env=env
    )
    if done.returncode:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    wall, cpu, rss_kib = done.stdout.split()
    return {"wall": float(wall), "cpu": float(cpu), "rss": int(rss_kib) * 1024}


def keys() -> dict[str, Path]:
    """A release key (``kiln keys new``) and the device keyring holding it (cached)."""
    d = CACHE / "keys"
    env = {**os.environ, "EDGEKILN_KEY_PASSPHRASE": PASSPHRASE}
    if not (d / "ring.json").exists():
        shutil.rmtree(d, ignore_errors=True)
        _run([str(BIN / "kiln"), "keys", "new", "rel", "--dir", str(d)], env=env)
        _run([str(BIN / "kiln"), "keys", "keyring", str(d / "ring.json"), "--add",
              str(d / "rel.pub")], env=env)  # fmt: skip
    return {"key": d / "rel.key", "ring": d / "ring.json"}


class Method:
    """One delta method: how to encode (cached), how to apply (always measured fresh)."""

    def __init__(self, name: str, label: str, encoded_as: str | None = None,
                 code: Path | None = None, chunk: int | None = None) -> None:  # fmt: skip
        self.name, self.label = name, label
        self.encoded_as = encoded_as or name  # another method's patch, applied another way
        self.code = code  # ours: apply with the appliance package of this tree (PYTHONPATH)
        self.chunk = chunk  # ours: the bundle's image chunk size (kiln bundle --chunk-size)

    @property
    def ours(self) -> bool:
        """Our bundle (at some chunk size, or applied with another revision's code)."""
        return self.encoded_as.startswith("ours")

    def apply_env(self) -> dict[str, str] | None:
        """The apply's environment: another tree's code for ``--before``, else inherited."""
        return None if self.code is None else {**os.environ, "PYTHONPATH": str(self.code)}

    def encode_argv(self, old: Path, new: Path, patch: Path) -> list[str]:
        """The encode command."""
        if self.encoded_as == "xdelta3":
            return ["xdelta3", "-9", "-S", "djw", "-e", "-f", "-s", str(old), str(new), str(patch)]
        if self.name == "zstd":
            # --long=31 asks for a 2 GiB window: the decoder then refuses the frame unless it
            # is given the same --long (or --memory); both sides say it.
            return ["zstd", "-q", "-f", "-19", "-T2", "--long=31", f"--patch-from={old}", str(new),
                    "-o", str(patch)]  # fmt: skip
        if self.name == "bsdiff4":
            code = "import bsdiff4,sys;bsdiff4.file_diff(*sys.argv[1:4])"
            return [PY, "-c", code, str(old), str(new), str(patch)]
        if self.name == "full":
            return ["zstd", "-q", "-f", "-19", "-T2", str(new), "-o", str(patch)]
        key = str(keys()["key"])
        chunk = [] if self.chunk is None else ["--chunk-size", str(self.chunk)]
        return [str(BIN / "kiln"), "bundle", "--slot-image", str(new), "--delta-from", str(old),
                "--key", key, *IDENTITY, "--version", "2.0.0", *chunk,
                "-o", str(patch)]  # fmt: skip

    def apply_argv(self, old: Path, patch: Path, out: Path) -> list[str]:
        """The apply command (a fresh process, writes ``out``)."""
        if self.name == "xdelta3":
            return ["xdelta3", "-d", "-f", "-s", str(old), str(patch), str(out)]
        if self.name == "xdelta3-sync":  # made durable like ours (the installer fsyncs)
            script = 'xdelta3 -d -f -s "$1" "$2" "$3" && sync "$3"'
            return ["sh", "-c", script, "sh", str(old), str(patch), str(out)]
        if self.name == "zstd":
            return ["zstd", "-q", "-f", "-d", "--long=31", f"--patch-from={old}", str(patch),
                    "-o", str(out)]  # fmt: skip
        if self.name == "bsdiff4":
            code = "import bsdiff4,sys;bsdiff4.file_patch(*sys.argv[1:4])"
            return [PY, "-c", code, str(old), str(out), str(patch)]
        if self.name == "full":
            return ["zstd", "-q", "-f", "-d", str(patch), "-o", str(out)]
        state = out.parent / "slots.env"
        state.unlink(missing_ok=True)
        shutil.rmtree(out.parent / "data", ignore_errors=True)
        (out.parent / "data").mkdir()
        out.write_bytes(b"")  # the target slot (a file here; a partition on a device)
        return [str(BIN / "appliance"), "install", str(patch), f"--loader=file:{state}",
                "--booted=A", f"--keyring={keys()['ring']}", "--product=bench",
                "--target=generic-x86-64", f"--slot=A={old}", f"--slot=B={out}",
                f"--data-dir={out.parent / 'data'}"]  # fmt: skip


def size_label(n: int) -> str:
    """1048576 -> '1 MiB', 524288 -> '512 KiB'."""
    return f"{n // MIB} MiB" if n % MIB == 0 else f"{n // 1024} KiB"


def parse_chunk_sizes(values: list[str]) -> list[int]:
    """``--chunk-size`` values: MiB (``4``), with a suffix (``512k``, ``2m``) or bytes (>= 4096)."""
    sizes: list[int] = []
    for item in (v.strip().lower() for value in values for v in value.split(",")):
        if not item:
            continue
        number = item.rstrip("kmib")
        unit = item[len(number) :]
        try:
            n = int(number)
        except ValueError:
            raise SystemExit(f"--chunk-size {item!r}: use MiB (4), 512k, 2m or bytes") from None
        scale = {"": MIB if n < 4096 else 1, "k": 1024, "kib": 1024, "m": MIB, "mib": MIB}
        if unit not in scale:
            raise SystemExit(f"--chunk-size {item!r}: unknown unit {unit!r} (k, m, or none)")
        size = n * scale[unit]
        if size < 4096 or size > 16 * MIB or size & (size - 1):
            raise SystemExit(f"--chunk-size {item!r}: a power of two in [4 KiB, 16 MiB]")
        if size not in sizes:
            sizes.append(size)
    return sizes or [MIB]


def ours_method(chunk: int) -> Method:
    """Ours at one image chunk size; its patch is cached under a name holding the size."""
    tag = f"{chunk // MIB}m" if chunk % MIB == 0 else f"{chunk // 1024}k"
    return Method(f"ours-{tag}", f"ours, {size_label(chunk)} chunks", f"ours-{tag}", chunk=chunk)


OURS = ours_method(MIB)
METHODS = {
    "xdelta3": Method("xdelta3", "xdelta3 -9 -S djw"),
    "zstd": Method("zstd", "zstd -19 --long=31 --patch-from"),
    "bsdiff4": Method("bsdiff4", "bsdiff4 (file_diff)"),
}
FULL = Method("full", "full zstd -19 -T2 (new image)")
XDELTA_SYNC = Method("xdelta3-sync", "xdelta3 -d, then sync (fsync) of its output", "xdelta3")


def before_method(rev: str, ours: Method) -> Method:
    """Ours, applied with the ``appliance`` package of git revision ``rev`` (same bundle)."""
    tree = CACHE / f"before-{rev}"
    if not (tree / "appliance").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "appliance"],
                                 check=True, capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return Method("ours-before", f"{ours.label}, apply code of {rev}", ours.encoded_as, tree,
                  ours.chunk)  # fmt: skip


# Device-side modules: a change there does not change the bundle the encoder writes (it
# re-applies each chunk with delta_apply, but only to check it), so it does not re-encode the
# 12-25 minute pairs; every apply is measured fresh and its output compared with the new image
# anyway. ``--fresh`` re-encodes regardless.
_APPLY_ONLY = {"delta_apply.py", "delta_check.py", "verified.py", "ordered.py", "writebehind.py",
               "reader.py", "sink.py", "keychain.py", "cli.py"}  # fmt: skip


def _encoder_sources() -> str:
    """A digest of our encoder's code: a cached bundle is stale when it changes."""
    h = hashlib.sha256()
    for name in sorted((ROOT / "appliance/bundle").glob("*.py")):
        if name.name not in _APPLY_ONLY:
            h.update(name.read_bytes())
    h.update((ROOT / "image/release/cli.py").read_bytes())
    return h.hexdigest()[:16]


def encode(m: Method, old: Path, new: Path, fresh: bool) -> tuple[Path, dict[str, float], bool]:
    """(patch file, encode wall/cpu/rss, reused from cache?) for ``old`` -> ``new`` with ``m``.

    Cached under CACHE/encoded, keyed by the command, both images' size and mtime (and our
    encoder's source digest), so a re-run re-measures every apply and re-encodes only what
    changed.
    """
    enc_dir = CACHE / "encoded"
    enc_dir.mkdir(parents=True, exist_ok=True)
    patch = enc_dir / f"{m.encoded_as}-{old.stem}-{new.stem}.patch"
    argv = m.encode_argv(old, new, patch)
    ident: list[object] = [argv, _encoder_sources() if m.ours else ""]
    for p in (old, new):
        st = p.stat()
        ident.append([p.name, str(st.st_size), str(st.st_mtime_ns)])
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
    meta = patch.with_suffix(".json")
    if not fresh and patch.exists() and meta.exists():
        saved = json.loads(meta.read_text())
        if saved.get("key") == key:
            return patch, saved["encode"], True
    patch.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
    env = {**os.environ, "EDGEKILN_KEY_PASSPHRASE": PASSPHRASE, "SOURCE_DATE_EPOCH": str(EPOCH)}
    r = measure(argv, env)
    meta.write_text(json.dumps({"key": key, "encode": r}))
    return patch, r, False


def apply(m: Method, old: Path, new: Path, patch: Path, work: Path) -> dict[str, float]:
    """Apply once in a fresh process, check the output is the new image byte for byte."""
    out = work / f"{m.name}.out"
    out.unlink(missing_ok=True)
    argv = m.apply_argv(old, patch, out)
    # Outside the timing: write back every dirty page first, so no apply pays for the one
    # before it (xdelta3 and zstd leave the image dirty; ours and xdelta3-sync make it durable).
    os.sync()
    try:
        r = measure([*TASKSET, *argv], m.apply_env())
        if _sha(out, new.stat().st_size) != _sha(new):
            raise SystemExit(f"{m.label}: applied image differs from the new image")
    finally:
        out.unlink(missing_ok=True)  # 384-640 MiB each: never left behind
    return r


def _sha(path: Path, size: int | None = None) -> str:
    h = hashlib.sha256()
    left = path.stat().st_size if size is None else size
    with open(path, "rb") as f:
        while left > 0 and (block := f.read(min(MIB, left))):
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def breakdown(bundle: Path) -> str:
    """Where the bytes of our delta bundle go: manifest, tar framing, unchanged and other chunks."""
    import struct
    import tarfile

    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
        manifest = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
        payload = members[2]
        data = tar.extractfile(payload).read()  # type: ignore[union-attr]
    doc = json.loads(manifest)["payloads"][0]
    copies = copy_bytes = at = 0
    for chunk in doc["chunks"]:
        magic, _n_ext, _n_ctrl, _zlen = struct.unpack_from("<4sIII", data, at)
        if magic == b"EKD0":  # runs of the base as they are: unchanged bytes
            copies += 1
            copy_bytes += chunk["size"]
        at += chunk["size"]
    framing = bundle.stat().st_size - len(manifest) - 64 - len(data)
    return (
        f"manifest {len(manifest):,} B ({len(manifest) / len(doc['chunks']):.0f} B per chunk: "
        f"two sha256 in hex each), tar headers and padding {framing:,} B, "
        f"{copies} unchanged chunks {copy_bytes:,} B ({copy_bytes / max(1, copies):.0f} B each), "
        f"{len(doc['chunks']) - copies} changed chunks {len(data) - copy_bytes:,} B"
    )


def run_pair(methods: list[Method], old: Path, new: Path, rounds: int, fresh: bool,
             work: Path) -> dict[str, dict[str, float]]:  # fmt: skip
    """Encode (cached) with each method, then apply all of them ``rounds`` times, alternating."""
    results: dict[str, dict[str, float]] = {}
    patches: dict[str, Path] = {}
    for m in methods:
        patch, enc, cached = encode(m, old, new, fresh)
        patches[m.name] = patch
        results[m.name] = {"size": patch.stat().st_size, "encode": enc["wall"],
                           "encode_rss": enc["rss"], "cached": cached}  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {m.name: [] for m in methods}
    for r in range(rounds):  # each round starts one method later: no method always goes first
        for m in methods[r % len(methods) :] + methods[: r % len(methods)]:
            runs[m.name].append(apply(m, old, new, patches[m.name], work))
    for m in methods:
        rs = runs[m.name]
        results[m.name].update(
            apply=_median([r["wall"] for r in rs]),
            cpu=_median([r["cpu"] for r in rs]),
            rss=max(r["rss"] for r in rs),
        )
    first = next((m.name for m in methods if m.ours), "")
    for ours in [m.name for m in methods if m.ours]:
        refs = (("xdelta3", ""), ("xdelta3-sync", "_sync"), ("ours-before", "_before"),
                (first, "_first"))  # fmt: skip
        for ref, suffix in refs:
            if ref in runs and ours in runs and ref != ours:
                pairs = list(zip(runs[ours], runs[ref], strict=True))
                results[ours]["wall_ratio" + suffix] = _median(
                    [o["wall"] / x["wall"] for o, x in pairs]
                )
                results[ours]["cpu_ratio" + suffix] = _median(
                    [o["cpu"] / x["cpu"] for o, x in pairs]
                )
    return results


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


HEAD = (
    "| method | size | % of new image zstd-19 | encode (peak RSS) | apply wall (median) | "
    "apply CPU (median) | apply peak RSS |\n| --- | --- | --- | --- | --- | --- | --- |"
)


def row(label: str, r: dict[str, float], full: float) -> str:
    enc = f"{r['encode']:.0f} s ({r['encode_rss'] / MIB:.0f} MiB)" + (
        " cached" if r.get("cached") else ""
    )
    return (
        f"| {label} | {r['size']:,} B | {100 * r['size'] / full if full else 0:.2f}% | {enc} | "
        f"{r['apply']:.2f} s | {r['cpu']:.2f} s | {r['rss'] / MIB:.1f} MiB |"
    )


PAIRS = {
    "package": "v1 -> v1 + jq (dpkg -x of 3 .debs + dpkg status)",
    "wheel": "v1 -> numpy 2.1.3 -> 2.2.1",
    "model": "v1 -> the 5 MiB model replaced (incompressible)",
    "release": "v1 -> v1 + jq and the 5 MiB model replaced (a release: package + model)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pairs", default="package,wheel,model", help="comma-separated: " + ",".join(PAIRS)
    )
    ap.add_argument("--bsdiff", default="", help="pairs to run bsdiff4 on (GiBs of RAM, minutes)")
    ap.add_argument("--no-zstd", action="store_true", help="skip zstd --patch-from")
    ap.add_argument("--no-large", action="store_true", help="skip the 2x image (RSS flatness)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating applies per method")
    ap.add_argument("--fresh", action="store_true", help="re-encode even if cached")
    ap.add_argument(
        "--no-percent", action="store_true",
        help="skip the %% denominator (the package image at zstd -19: minutes under load)",
    )  # fmt: skip
    ap.add_argument("--cpus", default="", help="apply under taskset -c CPUS (e.g. 0: one core)")
    ap.add_argument(
        "--before", default="",
        help="also apply ours with the appliance package of this git revision (A/B in one run)",
    )  # fmt: skip
    ap.add_argument(
        "--chunk-size", action="append", default=[],
        help="ours at these image chunk sizes: MiB (4), 512k, 2m or bytes; comma list or "
        "repeated (default: 1 MiB, what kiln bundle --delta-from writes)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.cpus:
        TASKSET[:] = ["taskset", "-c", args.cpus]
    sys.path.insert(0, str(ROOT))
    ours = [ours_method(n) for n in parse_chunk_sizes(args.chunk_size)]
    CACHE.mkdir(parents=True, exist_ok=True)  # a fresh machine has no cache folder yet
    pairs = [p for p in args.pairs.split(",") if p]
    v1 = make_image("v1")
    news = {kind: make_image(kind) for kind in pairs}
    work = CACHE / "work"
    shutil.rmtree(work, ignore_errors=True)  # outputs of older bench versions (GBs)
    work.mkdir(parents=True)
    cpus = (
        f"applies on CPUs {args.cpus} of {os.cpu_count()}"
        if args.cpus
        else f"{os.cpu_count()} CPUs"
    )
    print(f"images: {v1.stat().st_size / MIB:.0f} MiB ext4 (no journal); {cpus}, "
          f"load average at start {_load()}", flush=True)  # fmt: skip
    # Every encode first, each cached as soon as it ends: an interrupted run resumes.
    chosen: dict[str, list[Method]] = {}
    for kind in pairs:
        chosen[kind] = [*ours, METHODS["xdelta3"], XDELTA_SYNC]
        if args.before:
            chosen[kind].insert(len(ours), before_method(args.before, ours[0]))
        if not args.no_zstd:
            chosen[kind].append(METHODS["zstd"])
        if kind in args.bsdiff.split(","):
            chosen[kind].append(METHODS["bsdiff4"])
        for m in chosen[kind]:
            encode(m, v1, news[kind], args.fresh)
    # The denominator: one new image at zstd -19 (minutes under load; the new images differ
    # by a few MiB of 384, so the package pair's serves all pairs).
    full = 0.0
    if not args.no_percent:
        full = encode(FULL, v1, make_image("package"), False)[0].stat().st_size
        print(f"package image at zstd -19 -T2: {full:,} B (the % denominator)", flush=True)
    summary: list[str] = []
    for kind in pairs:
        methods = chosen[kind]
        print(f"\n{PAIRS[kind]} (load average {_load()})\n", flush=True)
        results = run_pair(methods, v1, news[kind], args.rounds, args.fresh, work)
        print(HEAD)
        for m in methods:
            print(row(m.label, results[m.name], full))
        best = min((results[m.name]["size"], m.label) for m in methods if not m.ours)
        for m in ours:
            summary.append(report(kind, m, results, best, args, v1, news[kind]))
        if "ours-before" in results:
            was, mine = results["ours-before"], results[ours[0].name]
            print(
                f"apply, {args.before}'s code / (xdelta3 -d + sync): wall "
                f"{was['wall_ratio_sync']:.2f}, CPU {was['cpu_ratio_sync']:.2f}; ours / "
                f"{args.before}'s code: wall {mine['wall_ratio_before']:.2f}, CPU "
                f"{mine['cpu_ratio_before']:.2f}; its peak RSS {was['rss'] / MIB:.1f} MiB"
            )
        print(f"(load average {_load()})", flush=True)
    if "model" in pairs and not args.no_large:  # same change, a ~1.7x larger image: flat RSS?
        summary += large_pair(ours, args.fresh, work)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nsummary ({args.rounds} alternating rounds; ratios are medians of per-round ratios)\n")
    print("| pair | chunk | size | / smallest other | apply wall / CPU vs xdelta3 -d + sync | "
          f"apply wall / CPU vs {ours[0].label} | apply peak RSS |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(summary))
    print(f"\nload average at the end {_load()}")


def large_pair(ours: list[Method], fresh: bool, work: Path) -> list[str]:
    """The model swap on ~1.7x larger images, one apply each: peak RSS flat in image size?"""
    l1, l2 = make_image("v1", extra=True), make_image("model", extra=True)
    mib = l1.stat().st_size / MIB
    print(f"\nthe model swap on a {mib:.0f} MiB image (load average {_load()}):", flush=True)
    large = run_pair(ours, l1, l2, 1, fresh, work)
    rows: list[str] = []
    for m in ours:
        r = large[m.name]
        print(f"apply peak RSS, {m.label}: {r['rss'] / MIB:.1f} MiB (apply {r['apply']:.2f} "
              f"s, delta {r['size']:,} B)", flush=True)  # fmt: skip
        rows.append(f"| model, {mib:.0f} MiB slots | {size_label(m.chunk or MIB)} | "
                    f"{r['size']:,} B | | | | {r['rss'] / MIB:.1f} MiB |")  # fmt: skip
    return rows


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def report(kind: str, m: Method, results: dict[str, dict[str, float]], best: tuple[int, str],
           args: argparse.Namespace, old: Path, new: Path) -> str:  # fmt: skip
    """Print ours at one chunk size against the others; its summary table row."""
    mine = results[m.name]
    print(f"\n{m.label}, where the bytes go: {breakdown(encode(m, old, new, False)[0])}")
    print(f"size, ours / smallest other ({best[1]}): {mine['size'] / best[0]:.3f} (goal <= 1.0)")
    print(f"apply, ours / (xdelta3 -d + sync), median of {args.rounds} alternating rounds: "
          f"wall {mine['wall_ratio_sync']:.2f}, CPU {mine['cpu_ratio_sync']:.2f} "
          f"(goal <= 1.5); ours / xdelta3 -d: wall {mine['wall_ratio']:.2f}, "
          f"CPU {mine['cpu_ratio']:.2f}")  # fmt: skip
    first = ""
    if "wall_ratio_first" in mine:
        first = f"{mine['wall_ratio_first']:.2f} / {mine['cpu_ratio_first']:.2f}"
        print(f"apply, ours / the first chunk size listed: wall {mine['wall_ratio_first']:.2f}, "
              f"CPU {mine['cpu_ratio_first']:.2f}")  # fmt: skip
    print(f"apply peak RSS: {mine['rss'] / MIB:.1f} MiB (goal <= 64 MiB); encode "
          f"{mine['encode']:.0f} s, peak RSS {mine['encode_rss'] / MIB:.0f} MiB (goal <= "
          "1024 MiB)", flush=True)  # fmt: skip
    return (f"| {kind} | {size_label(m.chunk or MIB)} | {mine['size']:,} B | "
            f"{mine['size'] / best[0]:.3f} | {mine['wall_ratio_sync']:.2f} / "
            f"{mine['cpu_ratio_sync']:.2f} | {first} | {mine['rss'] / MIB:.1f} MiB |")  # fmt: skip


if __name__ == "__main__":
    main()
