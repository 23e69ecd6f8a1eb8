"""Signed update bundles (format v1): write + sign, and stream + verify before any byte is written.

Public API (see FORMAT.md beside this file)::

    from appliance.bundle import Keyring, Policy, FileSink, open_bundle

    policy = Policy(keyring=Keyring.load(path), product="acme-cam", target="generic-x86-64",
                    min_security_version=state.security_floor, trusted_now=None)
    with open("x.bundle", "rb") as f, FileSink("/dev/disk/edgekiln/rootfs_b") as sink:
        bundle = open_bundle(f, policy)          # manifest + signature + policy verified
        bundle.stream_payload(bundle.manifest.payloads[0].name, sink)  # chunk-verified writes
        bundle.finish()                          # nothing unlisted follows

zstandard is imported only when a zstd payload is read or written.
"""

from __future__ import annotations

from appliance.bundle.errors import BundleError
from appliance.bundle.keychain import (
    LoadedKeyring,
    Rotation,
    apply_keyring_update,
    effective_keyring,
    load_keyring,
)
from appliance.bundle.keyring import Keyring, TrustedKey, key_id_for
from appliance.bundle.manifest import FORMAT_VERSION, Limits, Manifest, Payload
from appliance.bundle.reader import (
    Policy,
    VerifiedBundle,
    check_policy,
    open_bundle,
    peek_manifest,
)
from appliance.bundle.sink import FileSink, MemorySink, NullSink, Sink
from appliance.bundle.writer import BundleWriteError, PayloadSource, write_bundle

__all__ = [
    "FORMAT_VERSION",
    "BundleError",
    "BundleWriteError",
    "FileSink",
    "Keyring",
    "Limits",
    "LoadedKeyring",
    "Manifest",
    "MemorySink",
    "NullSink",
    "Payload",
    "PayloadSource",
    "Policy",
    "Rotation",
    "Sink",
    "TrustedKey",
    "VerifiedBundle",
    "apply_keyring_update",
    "check_policy",
    "effective_keyring",
    "key_id_for",
    "load_keyring",
    "open_bundle",
    "peek_manifest",
    "write_bundle",
]
