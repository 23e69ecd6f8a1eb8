#!/usr/bin/env python3
"""Benchmark: our delta bundle (ekdelta1) against xdelta3, zstd --patch-from, bsdiff4, full zstd.

Image pairs are real journal-less ext4 slot images made with the project's reproducible
``image.build.fs.make_ext4`` from a Debian bookworm minbase root (+ python3), cached once:

  v1   base root + numpy 2.1.3 (wheel unpacked into dist-packages) + an 8 MiB float32 model
  v2   numpy 2.2.1 + the model fine-tuned (every weight nudged) + a version file   (package+model)
  v2b  numpy 2.1.3 + the fine-tuned model + a version file                       (model only)
  L1/L2 = v1/v2 plus the same ~250 MiB of extra files: a ~2x larger image, for RSS constancy

Printed side by side, in one run: delta size (and % of full zstd -19), encode time, apply wall
and CPU time (medians), apply peak RSS (a fresh process; ru_maxrss of the child), and ours /
xdelta3 -d apply-time ratios. Ours is measured end to end: a signed
bundle, applied by ``open_bundle`` + ``stream_payload(base=BaseSlot)`` into a FileSink, every
chunk verified before it is written.

    .venv/bin/python tools/bench_delta.py                 # bsdiff4 on the model-only pair
    .venv/bin/python tools/bench_delta.py --bsdiff both   # also on the upgrade (~7 GB RAM)
    .venv/bin/python tools/bench_delta.py --bsdiff none --no-zstd --rounds 5   # quick

Encodes (minutes each under load) are cached in CACHE/encoded, keyed by command and inputs
(``--fresh`` re-encodes); every apply is measured again in each run, ``--rounds`` times,
interleaved across methods so each round sees the same background load. Apply outputs are
deleted as soon as they are checked; the cache holds the images and the encoded patches.
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
import time
import zipfile
from pathlib import Path

MIB = 1 << 20
CACHE = Path(os.environ.get("EDGEKILN_BENCH_CACHE", Path.home() / ".cache" / "edgekiln-delta"))
EPOCH = 1_750_000_000
NUMPY = {"old": "2.1.3", "new": "2.2.1"}
ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SITE = "usr/lib/python3/dist-packages"


def _run(argv: list[str], **kw: object) -> None:
    subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def base_root() -> Path:
    """A cached Debian bookworm minbase + python3 root (debootstrap once, ~2 min)."""
    root = CACHE / "base-root"
    if not (root / "usr/bin/python3").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
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


def model_bytes(tuned: bool) -> bytes:
    """An 8 MiB float32 'model'; fine-tuning nudges every weight by ~0.5% of its spread."""
    import numpy as np

    rng = np.random.default_rng(11)
    weights = rng.normal(0.0, 0.05, 2 * MIB).astype(np.float32)
    if tuned:
        noise = np.random.default_rng(12).normal(0.0, 0.00025, weights.size)
        weights = (weights + noise).astype(np.float32)
    return b"EKMODEL1" + weights.tobytes()


def make_tree(dest: Path, numpy: str, tuned: bool, version: str, extra: bool) -> None:
    """Copy the base root and add numpy, the model, a version file (and the extra files)."""
    shutil.rmtree(dest, ignore_errors=True)
    _run(["cp", "-a", str(base_root()), str(dest)])
    with zipfile.ZipFile(numpy_wheel(numpy)) as whl:
        whl.extractall(dest / SITE)
    models = dest / "opt/edgekiln/models/detector"
    models.mkdir(parents=True)
    (models / "model.onnx").write_bytes(model_bytes(tuned))
    (dest / "etc/edgekiln").mkdir(parents=True, exist_ok=True)
    (dest / "etc/edgekiln/version").write_text(version + "\n")
    if extra:  # identical in both versions: only makes the image larger
        _run(["cp", "-a", str(base_root() / "usr"), str(dest / "opt/extra-usr")])
        with zipfile.ZipFile(numpy_wheel(NUMPY["old"])) as whl:
            whl.extractall(dest / "opt/extra-numpy")


def make_image(name: str, numpy: str, tuned: bool, version: str, extra: bool = False) -> Path:
    """The cached ext4 slot image ``name`` (journal-less, reproducible: image.build.fs)."""
    from image.build.fs import fs_uuid_for, make_ext4

    out = CACHE / "images" / f"{name}.ext4"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        tree = Path(tmp) / "root"
        make_tree(tree, numpy, tuned, version, extra)
        size_mib = 640 if extra else 384
        make_ext4(tree, out, size_mib, fs_uuid_for("bench", "rootfs"), EPOCH)
    return out


def measure(argv: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + sys) and peak RSS bytes of ``argv`` as a fresh child.

    A small probe process runs ``argv`` as its only child and reports the child's rusage, so
    the RSS is the command's own (``ru_maxrss`` of the child), not this bench's.
    """
    probe = (
        "import resource,subprocess,sys,time;t=time.perf_counter();"
        "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL);w=time.perf_counter()-t;"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(w, r.ru_utime + r.ru_stime, r.ru_maxrss)"
    )
    done = subprocess.run([PY, "-c", probe, *argv], check=True, capture_output=True, text=True)
    wall, cpu, rss_kib = done.stdout.split()
    return {"wall": float(wall), "cpu": float(cpu), "rss": int(rss_kib) * 1024}


APPLY = """
import sys
from appliance.bundle import FileSink, Keyring, Policy, TrustedKey, open_bundle
from appliance.bundle.delta_apply import BaseSlot
bundle, base, out, pub = sys.argv[1:5]
policy = Policy(Keyring(1, (TrustedKey.from_public_key(bytes.fromhex(pub)),)), None, None)
with open(bundle, "rb") as f, FileSink(out, create=True) as sink, BaseSlot(base) as slot:
    b = open_bundle(f, policy)
    b.stream_payload(b.manifest.payloads[0].name, sink, base=slot)
    b.finish()
"""


def _key() -> tuple[object, str]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench").digest())
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _encode_ours(old: Path, new: Path, patch: Path) -> None:
    from appliance.bundle import PayloadSource, write_bundle

    key, _ = _key()
    with open(patch, "wb") as handle, tempfile.TemporaryDirectory(dir=patch.parent) as spool:
        write_bundle(handle, key=key, product="bench", targets=["generic-x86-64"],  # type: ignore[arg-type]
                     version="2.0.0", security_version=1, created=EPOCH,
                     payloads=[PayloadSource.delta(new, old)], spool_dir=Path(spool))  # fmt: skip


class Method:
    """One delta method: how to encode (cached), how to apply (always measured fresh)."""

    def __init__(self, name: str, label: str, encoded_as: str | None = None) -> None:
        self.name, self.label = name, label
        self.encoded_as = encoded_as or name  # another method's patch, applied another way

    def encode_argv(self, old: Path, new: Path, patch: Path) -> list[str] | None:
        """The encode command, or None for ours (encoded in this process)."""
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
        return None

    def apply_argv(self, old: Path, patch: Path, out: Path) -> list[str]:
        """The apply command (a fresh process, writes ``out``)."""
        if self.name == "xdelta3":
            return ["xdelta3", "-d", "-f", "-s", str(old), str(patch), str(out)]
        if self.name == "xdelta3-sync":  # made durable like ours (FileSink.flush = fsync)
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
        return [PY, "-c", APPLY, str(patch), str(old), str(out), _key()[1]]


OURS = Method("ours", "ours (ekdelta1 bundle)")
METHODS = {
    "xdelta3": Method("xdelta3", "xdelta3 -9 -S djw"),
    "zstd": Method("zstd", "zstd -19 --long=31 --patch-from"),
    "bsdiff4": Method("bsdiff4", "bsdiff4 (file_diff)"),
}
FULL = Method("full", "full zstd -19 -T2 (new image)")
XDELTA_SYNC = Method("xdelta3-sync", "xdelta3 -d, then sync (fsync) of its output", "xdelta3")


def _encoder_sources() -> str:
    """A digest of our encoder's code: a cached ekdelta1 bundle is stale when it changes."""
    h = hashlib.sha256()
    for name in ("delta.py", "delta_encode.py", "writer.py", "manifest.py"):
        h.update((ROOT / "appliance/bundle" / name).read_bytes())
    return h.hexdigest()[:16]


def encode(m: Method, old: Path, new: Path, fresh: bool) -> tuple[Path, float, bool]:
    """(patch file, encode seconds, reused from cache?) for ``old`` -> ``new`` with ``m``.

    Encodes take minutes (zstd -19 --long, bsdiff4 on 384 MiB): they are cached under
    CACHE/encoded, keyed by the command and both images' size and mtime (and our encoder's
    source digest), so a re-run re-measures every apply and only re-encodes what changed.
    """
    enc_dir = CACHE / "encoded"
    enc_dir.mkdir(parents=True, exist_ok=True)
    patch = enc_dir / f"{m.encoded_as}-{old.stem}-{new.stem}.patch"
    argv = m.encode_argv(old, new, patch)
    ident = [argv or ["ours", _encoder_sources()]]
    for p in (old, new):
        st = p.stat()
        ident.append([p.name, str(st.st_size), str(st.st_mtime_ns)])
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
    meta = patch.with_suffix(".json")
    if not fresh and patch.exists() and meta.exists():
        saved = json.loads(meta.read_text())
        if saved.get("key") == key:
            return patch, float(saved["encode"]), True
    patch.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
    if argv is None:
        t = time.perf_counter()
        _encode_ours(old, new, patch)
        secs = time.perf_counter() - t
    else:
        secs = measure(argv)["wall"]
    meta.write_text(json.dumps({"key": key, "encode": secs}))
    return patch, secs, False


def apply(m: Method, old: Path, new: Path, patch: Path, work: Path) -> dict[str, float]:
    """Apply once in a fresh process, check the output is the new image byte for byte."""
    out = work / f"{m.name}.out"
    out.unlink(missing_ok=True)
    # Outside the timing: write back every dirty page first, so no apply pays for the one
    # before it (xdelta3 and zstd leave 384 MiB dirty, ours and xdelta3-sync fsync).
    os.sync()
    try:
        r = measure(m.apply_argv(old, patch, out))
        if _sha(out) != _sha(new):
            raise SystemExit(f"{m.label}: applied image differs from the new image")
    finally:
        out.unlink(missing_ok=True)  # 384-640 MiB each: never left behind
    return r


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def run_pair(methods: list[Method], old: Path, new: Path, rounds: int, fresh: bool,
             work: Path) -> dict[str, dict[str, float]]:  # fmt: skip
    """Encode (cached) with each method, then apply all of them ``rounds`` times, interleaved.

    Interleaving puts every method under the same background load in each round; the
    per-method medians and the per-round ratios against xdelta3 are what the table reports.
    """
    results: dict[str, dict[str, float]] = {}
    patches: dict[str, Path] = {}
    for m in methods:
        patch, secs, cached = encode(m, old, new, fresh)
        patches[m.name] = patch
        results[m.name] = {"size": patch.stat().st_size, "encode": secs, "cached": cached}
        print(f"  encoded {m.label}: {patch.stat().st_size / MIB:.2f} MiB, {secs:.0f} s"
              f"{' (cached)' if cached else ''}", flush=True)  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {m.name: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            runs[m.name].append(apply(m, old, new, patches[m.name], work))
    for m in methods:
        rs = runs[m.name]
        results[m.name].update(
            apply=_median([r["wall"] for r in rs]),
            cpu=_median([r["cpu"] for r in rs]),
            rss=max(r["rss"] for r in rs),
        )
    for ref, suffix in (("xdelta3", ""), ("xdelta3-sync", "_sync")):
        if ref in runs and "ours" in runs:
            pairs = list(zip(runs["ours"], runs[ref], strict=True))
            results["ours"]["wall_ratio" + suffix] = _median(
                [o["wall"] / x["wall"] for o, x in pairs]
            )
            results["ours"]["cpu_ratio" + suffix] = _median([o["cpu"] / x["cpu"] for o, x in pairs])
    return results


HEAD = ("| method | size | % of full zstd-19 | encode | apply (wall, median) | apply CPU "
        "(median) | apply peak RSS |\n| --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip


def row(label: str, r: dict[str, float], full: float) -> str:
    enc = f"{r['encode']:.0f} s" + (" (cached)" if r.get("cached") else "")
    return (
        f"| {label} | {r['size'] / MIB:.2f} MiB | {100 * r['size'] / full:.1f}% | {enc} | "
        f"{r['apply']:.2f} s | {r['cpu']:.2f} s | {r['rss'] / MIB:.1f} MiB |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bsdiff", choices=["none", "model", "both"], default="model",
                    help="pairs to run bsdiff4 on (~17x the image in RAM, minutes)")  # fmt: skip
    ap.add_argument("--no-zstd", action="store_true", help="skip zstd --patch-from")
    ap.add_argument("--no-large", action="store_true", help="skip the 2x image (RSS constancy)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved applies per method")
    ap.add_argument("--fresh", action="store_true", help="re-encode even if cached")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    v1 = make_image("v1", NUMPY["old"], False, "1.0.0")
    v2 = make_image("v2", NUMPY["new"], True, "2.0.0")
    v2b = make_image("v2b", NUMPY["old"], True, "2.0.0")
    work = CACHE / "work"
    shutil.rmtree(work, ignore_errors=True)  # outputs of older bench versions (GBs)
    work.mkdir(parents=True)
    model_zst = len(__import__("zstandard").ZstdCompressor(level=19).compress(model_bytes(True)))
    print(f"images: {v1.stat().st_size / MIB:.0f} MiB ext4 (no journal); model 8 MiB, "
          f"zstd -19: {model_zst / MIB:.2f} MiB; {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    # The denominator for both pairs: the full image compressed (the two new images differ
    # by ~60 MB of 384 MiB; zstd -19 of a whole image takes minutes, so measured on v2b only).
    full_r = run_pair([FULL], v1, v2b, 1, args.fresh, work)["full"]
    full = full_r["size"]
    print(HEAD.split("\n", maxsplit=1)[0] + "\n" + HEAD.split("\n")[1])
    print(row(FULL.label + " (v2b)", full_r, full), flush=True)
    plan = [("model", "v1 -> v2b (model only)", v2b),
            ("upgrade", "v1 -> v2 (numpy 2.1.3 -> 2.2.1 + the model)", v2)]  # fmt: skip
    chosen: dict[str, list[Method]] = {}
    for kind, _label, _new in plan:
        chosen[kind] = [OURS, METHODS["xdelta3"], XDELTA_SYNC]
        if not args.no_zstd:
            chosen[kind].append(METHODS["zstd"])
        if args.bsdiff in ("both", kind):
            chosen[kind].append(METHODS["bsdiff4"])
    # Every encode first, cheapest and most wanted first; each is cached as soon as it ends,
    # so an interrupted run resumes where it stopped.
    order = sorted(
        ((k, m, new) for k, _label, new in plan for m in chosen[k]),
        key=lambda t: (
            ["ours", "xdelta3", "zstd", "bsdiff4"].index(t[1].encoded_as),
            t[0] != "model",
        ),
    )
    for _kind, m, new in order:
        encode(m, v1, new, args.fresh)
        print(f"  encoded {m.label}, {v1.stem} -> {new.stem}", flush=True)
    for kind, label, new in plan:
        methods = chosen[kind]
        print(f"\n{label}\n", flush=True)
        results = run_pair(methods, v1, new, args.rounds, args.fresh, work)
        print(HEAD)
        for m in methods:
            print(row(m.label, results[m.name], full))
        mine = results["ours"]
        best = min((results[m.name]["size"], m.label) for m in methods if m is not OURS)
        # (xdelta3-sync shares xdelta3's patch: the same size)
        print(f"\nours / best other delta ({best[1]}): {mine['size'] / best[0]:.2f} (goal <= 1.0)")
        if kind == "model":
            print(f"ours / changed model zstd-19: {mine['size'] / model_zst:.2f} (goal <= 1.1)")
        print(f"apply, ours / xdelta3 -d, median of {args.rounds} interleaved rounds: "
              f"wall {mine['wall_ratio']:.2f}, CPU {mine['cpu_ratio']:.2f} (goal <= 1.0); "
              f"ours / (xdelta3 -d + sync): wall {mine['wall_ratio_sync']:.2f}, "
              f"CPU {mine['cpu_ratio_sync']:.2f}")  # fmt: skip
        print(
            "  ours = a fresh python: imports, Ed25519 manifest check, sha256 of the whole "
            "base, per chunk sha256 of the wire bytes and of the rebuilt bytes, pwrite, "
            "fsync; xdelta3 -d = reads the source and the patch, decodes VCDIFF (adler32 "
            "per window), writes into the page cache: no fsync, no digest of the base or "
            "of the output"
        )
        print(f"apply peak RSS, ours: {mine['rss'] / MIB:.1f} MiB (goal <= 64 MiB)", flush=True)
        if kind == "model" and not args.no_large:  # same change, ~2x larger image: flat RSS?
            l1 = make_image("L1", NUMPY["old"], False, "1.0.0", extra=True)
            l2 = make_image("L2b", NUMPY["old"], True, "2.0.0", extra=True)
            large = run_pair([OURS], l1, l2, 1, args.fresh, work)["ours"]
            print("\napply peak RSS vs image size (same model-only change): "
                  f"{v1.stat().st_size / MIB:.0f} MiB image: {mine['rss'] / MIB:.1f} MiB; "
                  f"{l1.stat().st_size / MIB:.0f} MiB image: {large['rss'] / MIB:.1f} MiB "
                  f"(apply {large['apply']:.2f} s, delta {large['size'] / MIB:.2f} MiB)",
                  flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    bare = measure([PY, "-c", "import numpy, zstandard, cryptography"])
    print(f"\n(peak RSS of a bare `{Path(PY).name} -c 'import numpy, zstandard, cryptography'`: "
          f"{bare['rss'] / MIB:.1f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
