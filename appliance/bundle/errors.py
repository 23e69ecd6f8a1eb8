"""Named errors of the bundle reader, writer and keyring; each maps to a documented exit code.

Exit codes (``appliance bundle verify``, see FORMAT.md): 0 ok, 2 usage, 3 signature or key,
4 policy (product, target, security_version, expiry), 5 corrupt or malformed bundle.
"""

from __future__ import annotations

from appliance.errors import ApplianceError

EXIT_KEY = 3
EXIT_POLICY = 4
EXIT_FORMAT = 5


class BundleError(ApplianceError):
    """Base of every bundle error; nothing unverified was handed to the sink."""

    exit_code = EXIT_FORMAT


# --- corrupt or malformed container (exit 5) -------------------------------------------------


class EmptyBundleError(BundleError):
    """The bundle has zero bytes."""


class TruncatedBundleError(BundleError):
    """The stream ended inside a header, a member or before the end-of-archive marker."""


class TarHeaderError(BundleError):
    """A tar header is not the canonical ustar header the writer produces (garbage or tampered)."""


class UnsafeMemberError(BundleError):
    """A member is a link, device, directory, or has an absolute or ``..`` name."""


class UnexpectedMemberError(BundleError):
    """A member appears where the format (or the signed manifest) names another one."""


class DuplicateMemberError(UnexpectedMemberError):
    """A member name appears twice."""


class ExtraMemberError(UnexpectedMemberError):
    """A member follows the last payload the signed manifest lists."""


class MissingMemberError(BundleError):
    """The archive ends before a member the format or the signed manifest requires."""


class TrailingDataError(BundleError):
    """Bytes follow the end-of-archive marker."""


class SizeLimitError(BundleError):
    """A declared size exceeds the configured maximum (manifest, payload, chunk or keyring)."""


class SizeMismatchError(BundleError):
    """A member's size differs from the size the signed manifest declares."""


class ManifestJSONError(BundleError):
    """manifest.json is not UTF-8 JSON, or has a duplicate key."""


class NonCanonicalManifestError(BundleError):
    """manifest.json is valid JSON but not in canonical form (sorted, compact, ints only)."""


class ManifestSchemaError(BundleError):
    """manifest.json lacks a field, has an unknown one, or a field has a wrong type or value."""


class UnsupportedFormatError(BundleError):
    """The manifest's ``format`` version is not one this reader understands."""


class UnsupportedPayloadError(BundleError):
    """A payload kind or compression this reader does not implement (e.g. ``delta`` in v1)."""


class ChunkDigestError(BundleError):
    """A payload chunk's sha256 differs from the signed manifest (corrupt or tampered payload)."""


class DecompressionError(BundleError):
    """A verified zstd chunk failed to decompress to its declared size."""


class PayloadOrderError(BundleError):
    """Payloads were requested out of the order the stream carries them."""


# --- signature and keys (exit 3) -------------------------------------------------------------


class TrustError(BundleError):
    """Base of key and signature problems."""

    exit_code = EXIT_KEY


class SignatureInvalidError(TrustError):
    """manifest.sig is not a valid Ed25519 signature of manifest.json by the named key."""


class UnknownKeyError(TrustError):
    """The manifest names a key id that is not in the device keyring."""


class RevokedKeyError(TrustError):
    """The manifest names a key the keyring marks as revoked."""


class KeyExpiredError(TrustError):
    """The signing key's ``not_after`` has passed (by bundle creation time or trusted clock)."""


class KeyringError(TrustError):
    """A keyring file is unreadable, malformed, or its key ids do not match the keys."""


class KeyringRollbackError(TrustError):
    """A keyring update is not newer than the current one, or un-revokes a revoked key."""


# --- policy (exit 4) -------------------------------------------------------------------------


class PolicyError(BundleError):
    """Base of policy refusals: the bundle is authentic but not for this device now."""

    exit_code = EXIT_POLICY


class WrongProductError(PolicyError):
    """The bundle is for another product."""


class WrongTargetError(PolicyError):
    """The bundle does not list this device's hardware target."""


class RollbackError(PolicyError):
    """The bundle's security_version is below the committed slot's (anti-rollback)."""


class BundleExpiredError(PolicyError):
    """The bundle's ``expires`` time has passed on a trusted clock."""


class DowngradeError(PolicyError):
    """An older ``version`` at the same ``security_version``, not marked ``allow_downgrade``."""
