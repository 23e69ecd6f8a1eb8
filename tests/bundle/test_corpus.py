"""Every bad input is refused with its own named error, and nothing reaches the sink."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle import Limits, errors, open_bundle

from .corpus import CORPUS_DIR, build
from .kit import RecordingSink, image_bytes, policy

CASES = build()
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS_DIR / "expected.json").read_text())


def _policy(overrides: dict[str, Any]) -> Any:
    kw = dict(overrides)
    if "limits" in kw:
        kw["limits"] = Limits(**kw["limits"])
    return policy(**kw)


def _refuse(data: bytes, overrides: dict[str, Any], error: str) -> errors.BundleError:
    sink = RecordingSink()
    with pytest.raises(errors.BundleError) as info:
        verified = open_bundle(io.BytesIO(data), _policy(overrides))
        sink.armed = True
        for p in verified.manifest.payloads:
            verified.stream_payload(p.name, sink)
        verified.finish()
    exc = info.value
    assert type(exc).__name__ == error, f"{type(exc).__name__}: {exc}"
    # Only verified bytes ever reach the sink: a defect found while streaming may leave a
    # verified prefix (or, for defects after the last payload, the whole genuine image).
    genuine = image_bytes()
    for offset, chunk in sink.writes:
        assert chunk == genuine[offset : offset + len(chunk)], f"unverified bytes at {offset}"
    if not sink.armed or error == "ChunkDigestError":
        assert sink.writes == [], "refused before streaming, yet bytes reached the sink"
    message = str(exc)
    assert message and "\n" not in message, "errors are one line"
    return exc


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_case_refused(name: str) -> None:
    data, error, overrides = CASES[name]
    _refuse(data, overrides, error)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_corpus_file_refused(name: str) -> None:
    data = (CORPUS_DIR / f"{name}.bundle").read_bytes()
    _refuse(data, EXPECTED[name]["policy"], EXPECTED[name]["error"])


def test_corpus_files_match_the_cases() -> None:
    on_disk = {p.stem for p in Path(CORPUS_DIR).glob("*.bundle")}
    assert on_disk == set(CASES) == set(EXPECTED)
    for name, (_data, error, overrides) in CASES.items():
        assert EXPECTED[name] == {"error": error, "policy": overrides}


def test_every_error_class_is_exercised() -> None:
    used = {error for _d, error, _p in CASES.values()}
    declared = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, errors.BundleError) and obj.__doc__
    }
    # Bases and errors that belong to other paths (order of API calls, keyrings, decompression).
    not_corpus = {
        "BundleError",
        "TrustError",
        "PolicyError",
        "PayloadOrderError",
        "KeyringError",
        "KeyringRollbackError",
        "DecompressionError",
    }
    assert declared - not_corpus <= used, declared - not_corpus - used


def test_exit_codes_by_family() -> None:
    assert errors.SignatureInvalidError.exit_code == 3
    assert errors.UnknownKeyError.exit_code == 3
    assert errors.RollbackError.exit_code == 4
    assert errors.BundleExpiredError.exit_code == 4
    assert errors.TruncatedBundleError.exit_code == 5
    assert errors.UnsafeMemberError.exit_code == 5
