"""The bad-input corpus: every refused case, its expected error and the policy to read it with.

Run ``python -m tests.bundle.corpus`` from the repo root (or ``python tests/bundle/corpus.py``)
to rewrite ``tests/bundle/corpus/``; the committed files are the regression fixtures, and the
tests also rebuild each case in memory.
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bundle"

from .kit import (
    CHUNK,
    EXPIRING_KEY,
    REVOKED_KEY,
    STRANGER_KEY,
    Member,
    assemble,
    make_bundle,
    resign,
    special_header,
    split_members,
)

CORPUS_DIR = Path(__file__).with_name("corpus")
Case = tuple[bytes, str, dict[str, Any]]


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _offsets(bundle: bytes) -> dict[str, int]:
    """Byte offsets of each section boundary of a one-payload bundle."""
    members = split_members(bundle)
    pos = 0
    marks: dict[str, int] = {}
    for m in members:
        marks[f"{m.name}.header"] = pos
        marks[f"{m.name}.data"] = pos + 512
        marks[f"{m.name}.padding"] = pos + 512 + len(m.data)
        pos += 512 + len(m.data) + (-len(m.data) % 512)
    marks["end.first_block"] = pos
    marks["end.second_block"] = pos + 512
    return marks


def build() -> dict[str, Case]:
    """All cases: name -> (bytes, error class name, Policy overrides)."""
    good = make_bundle()
    members = split_members(good)
    manifest, sig, payload = members
    marks = _offsets(good)
    cases: dict[str, Case] = {}
    add: Callable[[str, bytes, str], None] = lambda n, b, e: cases.__setitem__(n, (b, e, {}))  # noqa: E731

    add("empty", b"", "EmptyBundleError")
    # Truncated at every section boundary (and inside the larger sections).
    for mark, at in marks.items():
        if at > 0:
            add(f"truncated-at-{mark}", good[:at], "TruncatedBundleError")
    add(
        "truncated-inside-manifest",
        good[: marks["manifest.json.data"] + 10],
        "TruncatedBundleError",
    )
    add(
        "truncated-inside-chunk",
        good[: marks["rootfs.img.data"] + CHUNK + 7],
        "TruncatedBundleError",
    )
    add("truncated-inside-end-marker", good[:-100], "TruncatedBundleError")
    # One flipped bit.
    add("bitflip-manifest", _flip(good, marks["manifest.json.data"] + 40), "SignatureInvalidError")
    add("bitflip-signature", _flip(good, marks["manifest.sig.data"] + 5), "SignatureInvalidError")
    add("bitflip-payload-chunk0", _flip(good, marks["rootfs.img.data"] + 100), "ChunkDigestError")
    add("bitflip-manifest-header", _flip(good, 100), "TarHeaderError")  # mode field
    add(
        "bitflip-payload-header-size",
        _flip(good, marks["rootfs.img.header"] + 134, 1),
        "TarHeaderError",
    )
    add("bitflip-padding", _flip(good, marks["manifest.json.padding"] + 3), "TarHeaderError")
    add("bitflip-end-marker", _flip(good, marks["end.second_block"] + 9), "TarHeaderError")
    add("garbage", bytes(range(256)) * 8, "TarHeaderError")
    # Keys.
    add("unknown-key", make_bundle(key=STRANGER_KEY), "UnknownKeyError")
    add("revoked-key", make_bundle(key=REVOKED_KEY), "RevokedKeyError")
    add("key-past-not-after", make_bundle(key=EXPIRING_KEY), "KeyExpiredError")
    add(
        "signed-by-other-key-than-named",
        resign(good, lambda m: None, key=STRANGER_KEY),
        "SignatureInvalidError",
    )
    # Policy.
    add("wrong-product", make_bundle(product="other-cam"), "WrongProductError")
    add("wrong-target", make_bundle(targets=["jetson-orin"]), "WrongTargetError")
    cases["lower-security-version"] = (good, "RollbackError", {"min_security_version": 6})
    cases["older-version-same-level"] = (  # good is 1.2.3 at security_version 5
        good,
        "DowngradeError",
        {"min_security_version": 5, "running_version": "1.3.0"},
    )
    cases["expired"] = (
        make_bundle(expires=1_750_000_100),
        "BundleExpiredError",
        {"trusted_now": 1_750_000_200},
    )
    # Members: duplicate, extra, missing, out of order.
    add("duplicate-manifest", assemble([manifest, manifest, sig, payload]), "DuplicateMemberError")
    add("duplicate-payload", assemble([manifest, sig, payload, payload]), "DuplicateMemberError")
    add(
        "extra-member-after-payloads",
        assemble([*members, Member("extra.bin", b"x")]),
        "ExtraMemberError",
    )
    add(
        "extra-member-before-payload",
        assemble([manifest, sig, Member("extra.bin", b"x"), payload]),
        "ExtraMemberError",
    )
    add("missing-payload", assemble([manifest, sig]), "MissingMemberError")
    add("missing-signature", assemble([manifest]), "MissingMemberError")
    add("signature-first", assemble([sig, manifest, payload]), "UnexpectedMemberError")
    add(
        "payload-renamed",
        assemble([manifest, sig, Member("rootfs.img.zst", payload.data)]),
        "ExtraMemberError",
    )
    # Unsafe names and member types.
    evil = [
        ("name-dotdot", special_header("../rootfs.img", tarfile.REGTYPE)),
        ("name-absolute", special_header("/etc/passwd", tarfile.REGTYPE)),
        ("name-nested-dotdot", special_header("a/../../b", tarfile.REGTYPE)),
        ("symlink", special_header("rootfs.img", tarfile.SYMTYPE, linkname="/dev/sda")),
        ("hardlink", special_header("rootfs.img", tarfile.LNKTYPE, linkname="manifest.json")),
        ("char-device", special_header("rootfs.img", tarfile.CHRTYPE)),
        ("block-device", special_header("rootfs.img", tarfile.BLKTYPE)),
        ("directory", special_header("rootfs.img", tarfile.DIRTYPE)),
        ("fifo", special_header("rootfs.img", tarfile.FIFOTYPE)),
        ("pax-header", special_header("rootfs.img", tarfile.XHDTYPE)),
    ]
    for name, header in evil:
        add(
            f"member-{name}",
            assemble([manifest, sig, Member("", b"", header)]),
            "UnsafeMemberError",
        )
    add(
        "manifest-is-symlink",
        special_header("manifest.json", tarfile.SYMTYPE, linkname="x") + bytes(1024),
        "UnsafeMemberError",
    )
    # Sizes.
    long_manifest = Member("manifest.json", manifest.data, _header_with_size("manifest.json", 4000))
    add("declared-size-beyond-data", assemble([long_manifest], end=False), "TruncatedBundleError")
    big = Member(
        "rootfs.img", payload.data, _header_with_size("rootfs.img", len(payload.data) + 10**6)
    )
    add(
        "payload-header-size-differs",
        assemble([manifest, sig, big], end=False),
        "SizeMismatchError",
    )
    add(
        "member-size-differs-from-manifest",
        assemble([manifest, sig, Member("rootfs.img", payload.data + b"x")]),
        "SizeMismatchError",
    )
    cases["image-larger-than-limit"] = (
        good,
        "SizeLimitError",
        {"limits": {"max_image_size": CHUNK}},
    )
    cases["manifest-larger-than-limit"] = (
        good,
        "SizeLimitError",
        {"limits": {"max_manifest_size": 256}},
    )
    huge = _header_with_size("manifest.json", 8**11 - 1)
    add("manifest-declares-8GiB", huge + bytes(512), "SizeLimitError")
    add(
        "signature-wrong-size",
        assemble([manifest, Member("manifest.sig", sig.data + b"\0"), payload]),
        "SizeMismatchError",
    )
    # JSON: each of these is correctly signed by a trusted key, so only the JSON checks refuse it.
    raw = manifest.data
    add(
        "json-whitespace",
        resign(good, None, raw=raw.replace(b'","', b'", "', 1)),
        "NonCanonicalManifestError",
    )
    doc = json.loads(raw)
    unsorted = json.dumps(dict(reversed(doc.items())), separators=(",", ":")).encode()
    add("json-unsorted-keys", resign(good, None, raw=unsorted), "NonCanonicalManifestError")
    dup = raw[:-1] + b',"version":"9.9.9"}'
    add("json-duplicate-key", resign(good, None, raw=dup), "ManifestJSONError")
    add(
        "json-float",
        resign(good, None, raw=raw.replace(b'"security_version":5', b'"security_version":5.0')),
        "NonCanonicalManifestError",
    )
    add(
        "json-explicit-null",
        resign(good, lambda m: m.__setitem__("expires", None)),
        "NonCanonicalManifestError",
    )
    add(
        "json-escaped-ascii",
        resign(good, None, raw=raw.replace(b'"acme-cam"', b'"\\u0061cme-cam"')),
        "NonCanonicalManifestError",
    )
    add("json-not-json", resign(good, None, raw=b"\xff{not json"), "ManifestJSONError")
    add(
        "json-unknown-field",
        resign(good, lambda m: m.__setitem__("zz_extra", 1)),
        "ManifestSchemaError",
    )
    add("json-missing-field", resign(good, lambda m: m.pop("product")), "ManifestSchemaError")
    add(
        "json-bool-as-int",
        resign(good, lambda m: m.__setitem__("security_version", True)),
        "ManifestSchemaError",
    )
    add(
        "json-bad-semver",
        resign(good, lambda m: m.__setitem__("version", "1.2")),
        "ManifestSchemaError",
    )
    add(
        "unknown-format-version",
        resign(good, lambda m: m.__setitem__("format", 2)),
        "UnsupportedFormatError",
    )
    add(
        "delta-kind",
        resign(good, lambda m: m["payloads"][0].__setitem__("kind", "delta")),
        "UnsupportedPayloadError",
    )
    add(
        "payload-name-unsafe-in-manifest",
        resign(good, lambda m: m["payloads"][0].__setitem__("name", "../x")),
        "ManifestSchemaError",
    )
    add(
        "chunk-list-short",
        resign(good, lambda m: m["payloads"][0]["image"]["chunks"].pop()),
        "ManifestSchemaError",
    )
    # After the end marker.
    add("trailing-data", good + b"\x01", "TrailingDataError")
    add("trailing-zero-block", good + bytes(512), "TrailingDataError")
    return cases


def _header_with_size(name: str, size: int) -> bytes:
    from appliance.bundle import tarstream

    return tarstream.build_header(name, size)


def write_corpus(directory: Path = CORPUS_DIR) -> None:
    """Rewrite the committed corpus files and expected.json."""
    directory.mkdir(exist_ok=True)
    for old in directory.glob("*.bundle"):
        old.unlink()
    expected = {}
    for name, (data, error, pol) in sorted(build().items()):
        (directory / f"{name}.bundle").write_bytes(data)
        expected[name] = {"error": error, "policy": pol}
    (directory / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_corpus()
    print(f"wrote {len(build())} cases to {CORPUS_DIR}")
