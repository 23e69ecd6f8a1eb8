#!/usr/bin/env python3
"""Benchmark: our delta bundle (ekdelta1) against xdelta3, zstd --patch-from, bsdiff4, full zstd.

Image pairs are real journal-less ext4 slot images made with the project's reproducible
``image.fs.make_ext4`` from a Debian bookworm minbase root (+ python3), cached once:

  v1   base root + numpy 2.1.3 (wheel unpacked into dist-packages) + an 8 MiB float32 model
  v2   numpy 2.2.1 + the model fine-tuned (every weight nudged) + a version file   (package+model)
  v2b  numpy 2.1.3 + the fine-tuned model + a version file                       (model only)
  L1/L2 = v1/v2 plus the same ~250 MiB of extra files: a ~2x larger image, for RSS constancy

Printed side by side, in one run: delta size (and % of full zstd -19), encode time, apply time,
apply peak RSS (a fresh process; ru_maxrss of the child). Ours is measured end to end: a signed
bundle, applied by ``open_bundle`` + ``stream_payload(base=BaseSlot)`` into a FileSink, every
chunk verified before it is written.

    .venv/bin/python tools/bench_delta.py                 # all pairs (bsdiff4 needs ~5 GB RAM)
    .venv/bin/python tools/bench_delta.py --no-bsdiff     # skip bsdiff4 (slow: minutes)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
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
    """The cached ext4 slot image ``name`` (journal-less, reproducible: image.fs.make_ext4)."""
    from image.fs import fs_uuid_for, make_ext4

    out = CACHE / "images" / f"{name}.ext4"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        tree = Path(tmp) / "root"
        make_tree(tree, numpy, tuned, version, extra)
        size_mib = 640 if extra else 384
        make_ext4(tree, out, size_mib, fs_uuid_for("bench", "rootfs"), EPOCH)
    return out


def measure(argv: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of ``argv`` run as the only child of a fresh process."""
    probe = (
        "import resource,subprocess,sys,time;t=time.perf_counter();"
        "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL);"
        "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([PY, "-c", probe, *argv], check=True, capture_output=True, text=True)
    secs, rss_kib = done.stdout.split()
    return float(secs), int(rss_kib) * 1024


APPLY = """
import sys
from appliance.bundle import FileSink, Keyring, Policy, TrustedKey, open_bundle
from appliance.bundle.delta import BaseSlot
bundle, base, out, pub = sys.argv[1:5]
policy = Policy(Keyring(1, (TrustedKey.from_public_key(bytes.fromhex(pub)),)), None, None)
with open(bundle, "rb") as f, FileSink(out, create=True) as sink, BaseSlot(base) as slot:
    b = open_bundle(f, policy)
    b.stream_payload(b.manifest.payloads[0].name, sink, base=slot)
    b.finish()
"""


def ours(old: Path, new: Path, work: Path) -> dict[str, float]:
    """Encode a signed delta bundle, apply it in a fresh process, check the result."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from appliance.bundle import PayloadSource, write_bundle

    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench").digest())
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    bundle = work / "delta.bundle"
    t = time.perf_counter()
    with open(bundle, "wb") as handle:
        write_bundle(handle, key=key, product="bench", targets=["generic-x86-64"],
                     version="2.0.0", security_version=1, created=EPOCH,
                     payloads=[PayloadSource.delta(new, old)], spool_dir=work)  # fmt: skip
    encode = time.perf_counter() - t
    out = work / "applied.img"
    out.unlink(missing_ok=True)
    secs, rss = measure([PY, "-c", APPLY, str(bundle), str(old), str(out), pub])
    _same(out, new, "ours")
    return {"size": bundle.stat().st_size, "encode": encode, "apply": secs, "rss": rss}


def _same(a: Path, b: Path, who: str) -> None:
    if _sha(a) != _sha(b):
        raise SystemExit(f"{who}: applied image differs from the new image")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


def tool(name: str, old: Path, new: Path, work: Path) -> dict[str, float]:
    """Encode and apply with a reference tool; apply measured as a fresh process."""
    patch, out = work / f"{name}.patch", work / f"{name}.out"
    for p in (patch, out):
        p.unlink(missing_ok=True)
    if name == "xdelta3":
        enc = ["xdelta3", "-9", "-S", "djw", "-e", "-f", "-s", str(old), str(new), str(patch)]
        dec = ["xdelta3", "-d", "-f", "-s", str(old), str(patch), str(out)]
    elif name == "zstd":
        enc = ["zstd", "-q", "-19", "-T2", "--long=31", f"--patch-from={old}", str(new), "-o",
               str(patch)]  # fmt: skip
        dec = ["zstd", "-q", "-d", "--long=31", f"--patch-from={old}", str(patch), "-o", str(out)]
    elif name == "bsdiff4":
        code = "import bsdiff4,sys;bsdiff4.file_diff(*sys.argv[1:4])"
        enc = [PY, "-c", code, str(old), str(new), str(patch)]
        dec = [PY, "-c", "import bsdiff4,sys;bsdiff4.file_patch(*sys.argv[1:4])",
               str(old), str(out), str(patch)]  # fmt: skip
    else:  # full zstd -19 of the new image
        enc = ["zstd", "-q", "-19", "-T2", str(new), "-o", str(patch)]
        dec = ["zstd", "-q", "-d", str(patch), "-o", str(out)]
    encode, _ = measure(enc)
    apply, rss = measure(dec)
    _same(out, new, name)
    return {"size": patch.stat().st_size, "encode": encode, "apply": apply, "rss": rss}


def row(label: str, r: dict[str, float], full: float) -> str:
    return (
        f"| {label} | {r['size'] / MIB:.2f} MiB | {100 * r['size'] / full:.1f}% | "
        f"{r['encode']:.1f} s | {r['apply']:.2f} s | {r['rss'] / MIB:.1f} MiB |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-bsdiff", action="store_true", help="skip bsdiff4 (minutes, ~5 GB)")
    ap.add_argument("--no-large", action="store_true", help="skip the 2x image (RSS constancy)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    v1 = make_image("v1", NUMPY["old"], False, "1.0.0")
    v2 = make_image("v2", NUMPY["new"], True, "2.0.0")
    v2b = make_image("v2b", NUMPY["old"], True, "2.0.0")
    work = CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    model_zst = len(__import__("zstandard").ZstdCompressor(level=19).compress(model_bytes(True)))
    print(f"images: {v1.stat().st_size / MIB:.0f} MiB ext4 (no journal); model 8 MiB, "
          f"zstd -19: {model_zst / MIB:.2f} MiB")  # fmt: skip
    # On a loaded 2-core machine zstd -19 of a whole image takes minutes: measured once (v2b),
    # the denominator for both pairs (the two new images differ by ~60 MB of 384 MiB).
    full = tool("full", v1, v2b, work)
    print(row("full zstd -19 -T2 (v2b)", full, full["size"]), flush=True)
    names = {"xdelta3": "xdelta3 -9 -S djw", "zstd": "zstd -19 --long=31 --patch-from",
             "bsdiff4": "bsdiff4"}  # fmt: skip
    plan = [("v1->v2b (model only)", v2b), ("v1->v2 (numpy 2.1.3->2.2.1 + model)", v2)]
    all_results: dict[str, dict[str, dict[str, float]]] = {}
    for i, (label, new) in enumerate(plan):
        print(f"\n{label}\n")
        print("| method | size | % of full zstd-19 | encode | apply | apply peak RSS |")
        print("| --- | --- | --- | --- | --- | --- |", flush=True)
        results = {"ours (ekdelta1 bundle)": ours(v1, new, work)}
        print(row("ours (ekdelta1 bundle)", results["ours (ekdelta1 bundle)"], full["size"]))
        for kind in ("xdelta3", "zstd"):
            results[names[kind]] = tool(kind, v1, new, work)
            print(row(names[kind], results[names[kind]], full["size"]), flush=True)
        all_results[label] = results
        mine = results["ours (ekdelta1 bundle)"]["size"]
        best = min(r["size"] for n, r in results.items() if not n.startswith("ours"))
        print(f"\nours / best other delta: {mine / best:.2f} (goal <= 1.0)")
        if "model only" in label:
            print(f"ours / changed model zstd-19: {mine / model_zst:.2f} (goal <= 1.1)")
        if i == 0 and not args.no_large:  # same model-only change, larger image: flat RSS?
            l1 = make_image("L1", NUMPY["old"], False, "1.0.0", extra=True)
            l2 = make_image("L2b", NUMPY["old"], True, "2.0.0", extra=True)
            large = ours(l1, l2, work)
            rss = results["ours (ekdelta1 bundle)"]["rss"]
            print("\napply peak RSS vs image size (same model-only change): "
                  f"{v1.stat().st_size / MIB:.0f} MiB image: {rss / MIB:.1f} MiB; "
                  f"{l1.stat().st_size / MIB:.0f} MiB image: {large['rss'] / MIB:.1f} MiB "
                  f"(apply {large['apply']:.2f} s, delta {large['size'] / MIB:.2f} MiB)",
                  flush=True)  # fmt: skip
    if not args.no_bsdiff:  # last: minutes and ~17x the image in memory
        r = tool("bsdiff4", v1, v2b, work)
        mine = all_results[plan[0][0]]["ours (ekdelta1 bundle)"]["size"]
        print(f"\nbsdiff4 on {plan[0][0]}:")
        print(row("bsdiff4", r, full["size"]))
        print(f"ours / bsdiff4: {mine / r['size']:.2f}", flush=True)
    print(f"\n(peak RSS of a bare `{Path(PY).name} -c pass`: "
          f"{measure([PY, '-c', 'pass'])[1] / MIB:.1f} MiB)")  # fmt: skip
    _ = resource


if __name__ == "__main__":
    main()
