"""Canonical JSON: the exact bytes that are signed, and the strict decoder that checks them.

Canonical form: UTF-8, object keys sorted by code point, no insignificant whitespace, no
floats/NaN (integers only), non-ASCII characters as themselves (``ensure_ascii=False``), and the
escapes Python's ``json.dumps`` produces. A document is canonical exactly when re-encoding its
decoded value gives the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.bundle.errors import ManifestJSONError, NonCanonicalManifestError


def encode(value: Any) -> bytes:
    """Encode ``value`` (dicts, lists, str, int, bool, None) as canonical JSON bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestJSONError(
                f"duplicate key {key!r} in JSON object; each key must be unique"
            )
        out[key] = value
    return out


def _refuse_float(text: str) -> Any:
    raise NonCanonicalManifestError(
        f"number {text!r} is not an integer; canonical JSON has ints only"
    )


def _refuse_constant(text: str) -> Any:
    raise NonCanonicalManifestError(f"{text} is not allowed in canonical JSON")


def decode(data: bytes, what: str = "manifest.json") -> Any:
    """Decode canonical JSON ``data``; refuse duplicates, floats and any non-canonical bytes.

    Raises ManifestJSONError (not UTF-8 / not JSON / duplicate key) or
    NonCanonicalManifestError (valid JSON in another form than :func:`encode` gives).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestJSONError(f"{what} is not UTF-8 (byte {exc.start}): {exc.reason}") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_refuse_float,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as exc:
        raise ManifestJSONError(f"{what} is not JSON (offset {exc.pos}): {exc.msg}") from None
    except RecursionError:
        raise ManifestJSONError(f"{what} nests too deeply") from None
    except ManifestJSONError as exc:
        raise ManifestJSONError(f"{what}: {exc}") from None
    except NonCanonicalManifestError as exc:
        raise NonCanonicalManifestError(f"{what}: {exc}") from None
    try:
        again = encode(value)
    except (ValueError, RecursionError) as exc:  # lone surrogates and the like
        raise NonCanonicalManifestError(f"{what} cannot be re-encoded canonically: {exc}") from None
    if again != data:
        at = next((i for i, (a, b) in enumerate(zip(again, data, strict=False)) if a != b), None)
        at = min(len(again), len(data)) if at is None else at
        raise NonCanonicalManifestError(
            f"{what} is not canonical JSON (first difference at byte {at}); "
            "write it with sorted keys, no whitespace, ints only "
            "(appliance.bundle.canonical.encode)"
        )
    return value
