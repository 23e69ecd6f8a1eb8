"""Semver precedence for the downgrade rule, and the signed ``allow_downgrade`` field."""

from __future__ import annotations

import pytest

from appliance.bundle import errors
from appliance.bundle.manifest import is_older, semver_key

from .kit import make_bundle, policy, read_all, resign


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0.0", "2.0.0"),
        ("2.0.0", "2.1.0"),
        ("2.1.0", "2.1.1"),
        ("1.9.9", "1.10.0"),
        ("1.0.0-alpha", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-alpha.beta", "1.0.0-beta"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-rc.1", "1.0.0"),
    ],
)
def test_semver_precedence(older: str, newer: str) -> None:
    assert is_older(older, newer) and not is_older(newer, older)


def test_build_metadata_is_ignored_and_garbage_is_not_older() -> None:
    assert semver_key("1.0.0+a") == semver_key("1.0.0+b")
    assert not is_older("1.0.0", "unknown") and not is_older("junk", "1.0.0")


def test_an_older_version_at_the_floor_is_refused_unless_signed_allowed() -> None:
    bundle = make_bundle(version="1.2.3", security_version=5)
    with pytest.raises(errors.DowngradeError, match=r"older than the running 1\.3\.0") as refused:
        read_all(bundle, policy(min_security_version=5, running_version="1.3.0"))
    assert refused.value.exit_code == 4
    read_all(bundle, policy(min_security_version=4, running_version="1.3.0"))  # a new level
    read_all(bundle, policy(min_security_version=5, running_version="1.2.3"))  # re-install
    allowed = make_bundle(version="1.2.3", security_version=5, allow_downgrade=True)
    read_all(allowed, policy(min_security_version=5, running_version="1.3.0"))


def test_allow_downgrade_false_written_out_is_not_canonical() -> None:
    def spell_out(manifest: dict[str, object]) -> None:
        manifest["allow_downgrade"] = False

    bundle = resign(make_bundle(), spell_out)
    with pytest.raises(errors.NonCanonicalManifestError):
        read_all(bundle, policy())
