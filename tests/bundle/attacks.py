"""The bundle fuzzer: classic mutations plus the attacks of issue #17, each with its oracle.

Shared by tools/fuzz_bundle.py (recorded runs) and tests/bundle/test_fuzz_attacks.py (CI).
Every case is generated from one ``random.Random`` and ends in an :class:`Outcome`:

* classic: bit flips, truncations, splices, inserted junk, overwrites of valid bundles;
* ``lying-head``: the first tar header rewritten (canonical, valid checksum) to declare another
  manifest size: above the limit (up to 8 GiB - 1, 400 MiB, limit + 1) or a wrong size within it;
* ``traversal``: a payload header replaced by a valid-checksum header naming ``../x``,
  ``/etc/x``, ``a/../../b``, a symlink, hard link, directory or GNU long name;
* ``forged-keyring``: the data partition holds a forged rotated keyring (higher version, the
  attacker's key, or a revoked key made usable again), with no evidence, the attacker's own
  evidence, genuine evidence beside a swapped keyring, or a damaged chain file; a bundle
  signed by the attacker (or by the revoked key) is then read with the keyring the device loads;
* ``rotation-abuse``: bundles signed by the trusted key carrying an invalid rotation (not newer,
  un-revoking, no usable key, not canonical, garbage), or a rotation re-signed by an attacker:
  the rotation must be refused before anything is stored (and before the slot is written);
* ``delta-bomb``: a signed delta whose chunk declares more controls than the format allows;
* ``fetch``: a classic mutation or lying head served to ``Fetcher`` through an in-memory
  opener: a refusal leaves nothing in the download folder, and no request asks for more than
  the manifest limit before the signature was checked.

The oracle sink counts bytes written before the manifest was verified and bytes that are not
the genuine image (both must stay 0); ``written`` counts every byte that reached the target.
"""

from __future__ import annotations

import io
import random
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle import (
    BundleError,
    Keyring,
    MemorySink,
    Policy,
    Rotation,
    TrustedKey,
    apply_keyring_update,
    canonical,
    effective_keyring,
    open_bundle,
    tarstream,
)
from appliance.bundle.delta import Extent, encode_chunk, max_controls
from appliance.bundle.delta_apply import BaseSlot
from appliance.bundle.keychain import CHAIN_PATH
from appliance.bundle.keyring import DATA_KEYRING_PATH
from appliance.ota.errors import OtaError, SourceError
from appliance.ota.fetch import Fetcher

from . import mutate
from .kit import (
    CHUNK,
    KEY,
    NEXT_KEY,
    REVOKED_KEY,
    STRANGER_KEY,
    Member,
    assemble,
    image_bytes,
    make_bundle,
    policy,
    raw_pub,
    special_header,
    split_members,
    trusted_keyring,
)

CLASSIC = ("flip", "multiflip", "truncate", "splice", "insert", "overwrite")
ATTACKS = ("lying-head", "traversal", "forged-keyring", "rotation-abuse", "delta-bomb", "fetch")
TRAVERSAL = ("../rootfs.img", "/rootfs.img", "a/../../etc/passwd", "..", "./rootfs.img", "x/y")


@dataclass
class Outcome:
    """What one case did."""

    kind: str
    accepted: bool
    error: str | None
    early: int = 0  # writes before the manifest was verified
    unverified: int = 0  # writes whose bytes are not the genuine image's
    written: int = 0  # bytes that reached the target
    leftover: int = 0  # files a refused download left behind
    asked: int = 0  # largest byte count one request asked for before the signature check


class Oracle(mutate.OracleSink):
    """The oracle sink, also counting every byte written."""

    def __init__(self, genuine: bytes) -> None:
        super().__init__(genuine)
        self.written = 0

    def write(self, offset: int, data: bytes) -> None:
        self.written += len(data)
        super().write(offset, data)


def _member_offsets(data: bytes) -> list[int]:
    offsets, pos = [], 0
    while data[pos : pos + 512] != bytes(512):
        offsets.append(pos)
        size = int(data[pos + 124 : pos + 135], 8)
        pos += 512 + size + tarstream.padding(size)
    return offsets


class Fuzzer:
    """Builds the valid bundles and attack material once; :meth:`case` runs one random case."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.limit = policy().limits.max_manifest_size
        images = {"a": image_bytes(CHUNK * 3 + 123, seed=1), "b": image_bytes(CHUNK * 2 + 7, 2)}
        self.valid = {
            "a-none": (make_bundle(images["a"]), images["a"]),
            "a-zstd": (make_bundle(images["a"], compression="zstd"), images["a"]),
            "b-none": (make_bundle(images["b"], version="2.0.0"), images["b"]),
            "b-zstd-keyring": (
                make_bundle(images["b"], compression="zstd",
                            keyring_payload=trusted_keyring(2).to_bytes()),
                images["b"],
            ),
        }  # fmt: skip
        self.names = sorted(self.valid)
        self.by_bytes = {data: genuine for data, genuine in self.valid.values()}
        self.policy = policy()
        self.baked = work / "baked-keyring.json"
        self.baked.write_bytes(trusted_keyring(1).to_bytes())
        self.attacker_bundle = make_bundle(key=STRANGER_KEY)
        self.revoked_bundle = make_bundle(key=REVOKED_KEY)
        self.genuine_v2 = Keyring(2, (*trusted_keyring(1).keys, _usable(NEXT_KEY)))
        self.genuine_rotation = self._rotation(KEY, self.genuine_v2, trusted_keyring(1))
        self._delta_setup()

    # -- the case loop ----------------------------------------------------------------------

    def case(self, rng: random.Random) -> Outcome:
        """One random case: half classic mutations, half #17 attacks."""
        kind = rng.choice(CLASSIC if rng.random() < 0.5 else ATTACKS)
        if kind in CLASSIC:
            data, genuine = self._classic(kind, rng)
            return self._read(kind, data, genuine)
        run: Callable[[random.Random], Outcome] = getattr(self, "_" + kind.replace("-", "_"))
        return run(rng)

    def _read(self, kind: str, data: bytes, genuine: bytes, pol: Policy | None = None) -> Outcome:
        sink = Oracle(genuine)
        accepted, error = True, None
        try:
            verified = open_bundle(io.BytesIO(data), pol or self.policy)
            sink.armed = True
            for p in verified.manifest.payloads:
                verified.stream_payload(p.name, sink if p.kind == "full" else MemorySink(1 << 20))
            verified.finish()
        except BundleError as exc:
            accepted, error = False, type(exc).__name__
        if accepted and data in self.by_bytes:
            accepted, error = False, "identical to a valid bundle (not a mutation)"
        return Outcome(kind, accepted, error, sink.early, sink.unverified, sink.written)

    def _classic(self, kind: str, rng: random.Random) -> tuple[bytes, bytes]:
        data, genuine = self.valid[rng.choice(self.names)]
        if kind == "flip":
            out = mutate.flip(data, rng.randrange(len(data) * 8))
        elif kind == "multiflip":
            out = data
            for _ in range(rng.randint(2, 16)):
                out = mutate.flip(out, rng.randrange(len(data) * 8))
        elif kind == "truncate":
            out = mutate.truncate(data, rng.randrange(len(data)))
        elif kind == "splice":
            other = self.valid[rng.choice(self.names)][0]
            out = mutate.splice(
                data, other, rng.randrange(len(data) + 1), rng.randrange(len(other) + 1)
            )
        elif kind == "insert":
            junk = rng.randbytes(rng.randint(1, 1024))
            out = mutate.insert(data, rng.randrange(len(data) + 1), junk)
        else:
            at = rng.randrange(len(data))
            out = data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at + 64 :]
        return out, self.by_bytes.get(out, genuine)

    # -- #17 attacks --------------------------------------------------------------------------

    def _lie(self, rng: random.Random) -> tuple[bytes, bytes]:
        data, genuine = self.valid[rng.choice(self.names)]
        real = int(data[124:135], 8)
        declared = rng.choice([
            self.limit + 1, 400 << 20, 8**11 - 1, rng.randint(self.limit + 1, 8**11 - 1),
            rng.randint(0, real - 1), rng.randint(real + 1, self.limit),
        ])  # fmt: skip
        return tarstream.build_header("manifest.json", declared) + data[512:], genuine

    def _lying_head(self, rng: random.Random) -> Outcome:
        return self._read("lying-head", *self._lie(rng))

    def _traversal(self, rng: random.Random) -> Outcome:
        data, genuine = self.valid[rng.choice(self.names)]
        offsets = _member_offsets(data)
        at = offsets[rng.randrange(2, len(offsets))]  # a payload member
        size = int(data[at + 124 : at + 135], 8)
        kind = rng.choice([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE,
                           tarfile.GNUTYPE_LONGNAME])  # fmt: skip
        header = special_header(rng.choice(TRAVERSAL), kind, size, linkname="/etc/shadow")
        return self._read("traversal", data[:at] + header + data[at + 512 :], genuine)

    def _rotation(self, signer: object, new: Keyring | bytes, trusted: Keyring) -> Rotation:
        ring = new if isinstance(new, bytes) else new.to_bytes()
        bundle = make_bundle(key=signer, keyring_payload=ring)  # type: ignore[arg-type]
        verified = open_bundle(io.BytesIO(bundle), policy(keyring=trusted))
        return Rotation(verified.read_keyring(), verified.manifest_bytes, verified.signature)

    def _forged_keyring(self, rng: random.Random) -> Outcome:
        data_dir = self.work / "data"
        shutil.rmtree(data_dir, ignore_errors=True)
        (data_dir / DATA_KEYRING_PATH).parent.mkdir(parents=True)
        version = rng.randint(2, 1 << 20)
        base = trusted_keyring(1).keys
        unrevoke = rng.random() < 0.3  # make the revoked key usable again, sign with it
        keys = tuple(_usable(REVOKED_KEY) if k.revoked else k for k in base) if unrevoke else base
        forged = Keyring(version, (*keys, _usable(STRANGER_KEY)))
        how = rng.choice(["file-only", "attacker-evidence", "swapped", "damaged-chain"])
        if how == "attacker-evidence":
            mine = Keyring(1, (_usable(STRANGER_KEY),))
            apply_keyring_update(mine, forged.to_bytes(), data_dir,
                                 self._rotation(STRANGER_KEY, forged, mine))  # fmt: skip
        elif how in ("swapped", "damaged-chain"):
            rot = self.genuine_rotation
            apply_keyring_update(trusted_keyring(1), rot.keyring, data_dir, rot)
            if how == "damaged-chain":
                chain = bytearray((data_dir / CHAIN_PATH).read_bytes())
                i = rng.randrange(len(chain))
                chain[i] ^= 1 << rng.randrange(8)
                (data_dir / CHAIN_PATH).write_bytes(bytes(chain))
        (data_dir / DATA_KEYRING_PATH).write_bytes(forged.to_bytes())
        trusted = effective_keyring(self.baked, data_dir)
        bundle = self.revoked_bundle if unrevoke else self.attacker_bundle
        return self._read("forged-keyring", bundle, image_bytes(), policy(keyring=trusted))

    def _rotation_abuse(self, rng: random.Random) -> Outcome:
        current = trusted_keyring(1)
        keys = current.keys
        good = _usable(NEXT_KEY)
        choice = rng.choice(["same-version", "unrevoke", "all-revoked", "not-canonical",
                             "garbage", "no-keys", "attacker-signed"])  # fmt: skip
        version = rng.randint(2, 1 << 16)
        ring: bytes
        if choice == "same-version":
            ring = Keyring(1, (*keys, good)).to_bytes()
        elif choice == "unrevoke":
            ring = Keyring(version, tuple(_usable(REVOKED_KEY) if k.revoked else k
                                          for k in keys)).to_bytes()  # fmt: skip
        elif choice == "all-revoked":
            ring = Keyring(version, tuple(_revoked(k) for k in keys)).to_bytes()
        elif choice == "not-canonical":
            ring = Keyring(version, (*keys, good)).to_bytes().replace(b",", b", ", 1)
        elif choice == "garbage":
            ring = rng.randbytes(rng.randint(1, 512))
        elif choice == "no-keys":
            ring = canonical.encode({"format": 1, "keys": [], "version": version})
        else:
            ring = Keyring(version, (*keys, _usable(STRANGER_KEY))).to_bytes()
        signer = STRANGER_KEY if choice == "attacker-signed" else KEY
        bundle = make_bundle(key=signer, keyring_payload=ring)
        data_dir = self.work / "rotation-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        sink = Oracle(image_bytes())
        try:
            verified = open_bundle(io.BytesIO(bundle), policy(keyring=current))
            data = verified.read_keyring()
            # Validated with the manifest, before the slot is written (as the installer does).
            evidence = Rotation(data, verified.manifest_bytes, verified.signature)
            apply_keyring_update(current, data, data_dir, evidence)
            sink.armed = True
            verified.stream_payload(verified.manifest.payloads[0].name, sink)
            verified.finish()
        except BundleError as exc:
            stored = (data_dir / DATA_KEYRING_PATH).exists()
            return Outcome("rotation-abuse", stored, type(exc).__name__, sink.early,
                           sink.unverified, sink.written)  # fmt: skip
        return Outcome("rotation-abuse", True, None, sink.early, sink.unverified, sink.written)

    def _delta_setup(self) -> None:
        self.delta_image = image_bytes(CHUNK * 6, seed=9)
        self.delta_base = self.work / "delta-base.img"
        self.delta_base.write_bytes(self.delta_image)
        new = self.work / "delta-new.img"
        new.write_bytes(self.delta_image)
        from appliance.bundle import PayloadSource, write_bundle

        out = io.BytesIO()
        delta = PayloadSource.delta(new, self.delta_base)
        write_bundle(out, key=KEY, product="acme-cam", targets=["generic-x86-64"],
                     version="2.0.0", security_version=5, created=1_750_000_000,
                     payloads=[delta], chunk_size=CHUNK)  # fmt: skip
        self.delta_members = split_members(out.getvalue())

    def _delta_bomb(self, rng: random.Random) -> Outcome:
        import hashlib

        manifest = canonical.decode(self.delta_members[0].data)
        payload = manifest["payloads"][0]
        bomb_at = rng.randrange(len(payload["chunks"]))
        wires = []
        for i in range(len(payload["chunks"])):
            size = min(CHUNK, len(self.delta_image) - i * CHUNK)
            n = rng.randint(max_controls(size) + 1, size + 1) if i == bomb_at else 1
            controls = [(size, 0, 0)] + [(0, 0, 0)] * (n - 1)
            wires.append(encode_chunk([Extent(i * CHUNK, size)], controls, bytes(size), b"", 1))
        payload["chunks"] = [
            {"sha256": hashlib.sha256(w).hexdigest(), "size": len(w)} for w in wires
        ]
        payload["size"] = sum(len(w) for w in wires)
        raw = canonical.encode(manifest)
        bundle = assemble([Member("manifest.json", raw), Member("manifest.sig", KEY.sign(raw)),
                           Member(self.delta_members[2].name, b"".join(wires))])  # fmt: skip
        sink = Oracle(self.delta_image)
        try:
            verified = open_bundle(io.BytesIO(bundle), self.policy)
            sink.armed = True
            with BaseSlot(self.delta_base) as slot:
                verified.stream_payload(verified.manifest.payloads[0].name, sink, base=slot)
            verified.finish()
        except BundleError as exc:
            return Outcome("delta-bomb", False, type(exc).__name__, sink.early, sink.unverified,
                           sink.written)  # fmt: skip
        return Outcome("delta-bomb", True, None, sink.early, sink.unverified, sink.written)

    def _fetch(self, rng: random.Random) -> Outcome:
        if rng.random() < 0.5:
            data, _genuine = self._lie(rng)
        else:
            data, _genuine = self._classic(rng.choice(CLASSIC), rng)
        asked: list[int] = []

        def opener(url: str, start: int, end: int | None) -> io.BytesIO:
            stop = len(data) if end is None else end + 1
            asked.append(stop - start)
            return io.BytesIO(data[start:stop])

        folder = self.work / "updates"
        shutil.rmtree(folder, ignore_errors=True)
        fetcher = Fetcher("mem://x.bundle", folder, self.policy, opener=opener)
        try:
            got = fetcher.run().read_bytes()
        except (BundleError, OtaError) as exc:
            # An interruption (SourceError: here, a truncated body) keeps its verified part for
            # the resume; every refusal must leave the folder empty.
            interrupted = isinstance(exc, SourceError)
            left = len(list(folder.iterdir())) if folder.exists() and not interrupted else 0
            head = max(asked[:2], default=0)
            return Outcome("fetch", False, type(exc).__name__, leftover=left, asked=head)
        # Bytes past the end marker are never asked for: the file kept is then the genuine
        # bundle (a mirror appending junk changes nothing); anything else is an acceptance.
        return Outcome("fetch", got not in self.by_bytes, None, asked=max(asked[:2]))


def _usable(key: object) -> TrustedKey:
    return TrustedKey.from_public_key(raw_pub(key))  # type: ignore[arg-type]


def _revoked(key: TrustedKey) -> TrustedKey:
    return TrustedKey(key.id, key.public_key, revoked=True, not_after=key.not_after)
