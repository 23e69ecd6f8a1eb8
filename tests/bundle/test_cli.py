"""The real commands: kiln keys / kiln bundle, then appliance bundle info / verify, exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
PASS = "correct horse battery"


def run(
    tool: str,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "EDGEKILN_KEY_PASSPHRASE": PASS,
        "SOURCE_DATE_EPOCH": "1750000000",
        **(env or {}),
    }
    return subprocess.run(
        [str(BIN / tool), *args],
        capture_output=True,
        text=stdin is None,
        env=full_env,
        input=stdin,
        cwd=cwd,
        check=False,
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two keys, a keyring trusting the first, a slot image and a bundle signed by the first."""
    d = tmp_path_factory.mktemp("release")
    for name in ("rel1", "rel2"):
        out = run("kiln", "keys", "new", name, "--dir", str(d / "keys"))
        assert out.returncode == 0, out.stderr
    out = run("kiln", "keys", "keyring", str(d / "ring.json"), "--add", str(d / "keys/rel1.pub"))
    assert out.returncode == 0, out.stderr
    image = d / "rootfs.img"
    image.write_bytes(os.urandom(300_000) + bytes(2_500_000))
    args = [
        "--slot-image",
        str(image),
        "--product",
        "acme-cam",
        "--target",
        "generic-x86-64",
        "--version",
        "1.4.0",
        "--security-version",
        "3",
    ]
    out = run(
        "kiln", "bundle", *args, "--key", str(d / "keys/rel1.key"), "-o", str(d / "good.bundle")
    )
    assert out.returncode == 0, out.stderr
    out = run(
        "kiln", "bundle", *args, "--key", str(d / "keys/rel2.key"), "-o", str(d / "other.bundle")
    )
    assert out.returncode == 0, out.stderr
    return {
        "dir": d,
        "ring": d / "ring.json",
        "good": d / "good.bundle",
        "other": d / "other.bundle",
        "image": image,
    }


def test_private_key_is_encrypted_and_0600(release: dict[str, Path]) -> None:
    key = release["dir"] / "keys/rel1.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    again = run("kiln", "keys", "new", "rel1", "--dir", str(release["dir"] / "keys"))
    assert again.returncode != 0 and "never overwritten" in again.stderr


def test_wrong_passphrase_is_a_one_line_error(release: dict[str, Path]) -> None:
    out = run(
        "kiln",
        "keys",
        "export",
        str(release["dir"] / "keys/rel1.key"),
        env={"EDGEKILN_KEY_PASSPHRASE": "wrong one!"},
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "cannot decrypt" in out.stderr


def test_export_prints_the_key_id(release: dict[str, Path]) -> None:
    ring = json.loads(release["ring"].read_text())
    out = run("kiln", "keys", "export", str(release["dir"] / "keys/rel1.key"))
    assert out.returncode == 0
    assert f"# key id {ring['keys'][0]['id']}" in out.stdout


def test_info_and_verify(release: dict[str, Path]) -> None:
    info = run("appliance", "bundle", "info", "--json", str(release["good"]))
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["version"] == "1.4.0" and data["payloads"][0]["image_size"] == 2_800_000
    ok = run(
        "appliance",
        "bundle",
        "verify",
        str(release["good"]),
        "--keyring",
        str(release["ring"]),
        "--product",
        "acme-cam",
        "--target",
        "generic-x86-64",
    )
    assert ok.returncode == 0, ok.stderr
    assert "2800000 bytes verified" in ok.stdout


def test_verify_from_stdin(release: dict[str, Path]) -> None:
    out = run(
        "appliance",
        "bundle",
        "verify",
        "-",
        "--keyring",
        str(release["ring"]),
        stdin=release["good"].read_bytes(),
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("unknown-key", 3, "not in"),
        ("rollback", 4, "anti-rollback"),
        ("wrong-target", 4, "this device is"),
        ("truncated", 5, "incomplete"),
        ("flipped", 5, "does not match"),
        ("usage", 2, "Usage"),
    ],
)
def test_verify_exit_codes(release: dict[str, Path], case: str, code: int, needle: str) -> None:
    ring = ["--keyring", str(release["ring"])]
    good = release["good"]
    data = good.read_bytes()
    if case == "unknown-key":
        out = run("appliance", "bundle", "verify", str(release["other"]), *ring)
    elif case == "rollback":
        out = run("appliance", "bundle", "verify", str(good), *ring, "--min-security-version", "4")
    elif case == "wrong-target":
        out = run("appliance", "bundle", "verify", str(good), *ring, "--target", "jetson-orin")
    elif case == "truncated":
        out = run("appliance", "bundle", "verify", "-", *ring, stdin=data[: len(data) // 2])
    elif case == "flipped":
        flipped = bytearray(data)
        flipped[-2000] ^= 1
        out = run("appliance", "bundle", "verify", "-", *ring, stdin=bytes(flipped))
    else:
        out = run("appliance", "bundle", "verify", *ring)
    assert out.returncode == code, (out.returncode, out.stderr)
    stderr = out.stderr if isinstance(out.stderr, str) else out.stderr.decode()
    assert needle in stderr


def test_verify_uses_the_state_floor_and_rotated_keyring(
    release: dict[str, Path], tmp_path: Path
) -> None:
    from appliance.state import SlotRecord, record_committed

    record_committed(tmp_path, SlotRecord("a", "1.5.0", 4))
    out = run(
        "appliance",
        "bundle",
        "verify",
        str(release["good"]),
        "--keyring",
        str(release["ring"]),
        "--data-dir",
        str(tmp_path),
    )
    assert out.returncode == 4 and "below the committed 4" in out.stderr


def test_rotation_bundle_from_the_cli(release: dict[str, Path]) -> None:
    d = release["dir"]
    ring1 = json.loads(release["ring"].read_text())
    old_id = ring1["keys"][0]["id"]
    out = run(
        "kiln",
        "keys",
        "keyring",
        str(d / "ring2.json"),
        "--from",
        str(release["ring"]),
        "--add",
        str(d / "keys/rel2.pub"),
        "--revoke",
        old_id,
    )
    assert out.returncode == 0, out.stderr
    out = run(
        "kiln",
        "bundle",
        "--slot-image",
        str(release["image"]),
        "--product",
        "acme-cam",
        "--target",
        "generic-x86-64",
        "--version",
        "1.5.0",
        "--security-version",
        "3",
        "--key",
        str(d / "keys/rel1.key"),
        "--keyring-update",
        str(d / "ring2.json"),
        "-o",
        str(d / "rotate.bundle"),
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(run("appliance", "bundle", "info", "--json", str(d / "rotate.bundle")).stdout)
    assert [p["kind"] for p in info["payloads"]] == ["keyring", "full"]  # rotation first
    out = run(
        "appliance", "bundle", "verify", str(d / "rotate.bundle"), "--keyring", str(release["ring"])
    )
    assert out.returncode == 0, out.stderr


def test_bundle_from_recipe(release: dict[str, Path]) -> None:
    recipe = Path(__file__).resolve().parents[2] / "recipes/generic-x86-64.toml"
    if not recipe.exists():
        pytest.skip("no recipes in this checkout")
    out = run(
        "kiln",
        "bundle",
        "--slot-image",
        str(release["image"]),
        "--recipe",
        str(recipe),
        "--key",
        str(release["dir"] / "keys/rel1.key"),
        "-o",
        str(release["dir"] / "r.bundle"),
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(
        run("appliance", "bundle", "info", "--json", str(release["dir"] / "r.bundle")).stdout
    )
    assert info["targets"] == ["generic-x86-64"]


def test_passphrase_prompt_without_the_environment_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGEKILN_KEY_PASSPHRASE"}
    out = subprocess.run(
        [str(BIN / "kiln"), "keys", "new", "k1", "--dir", str(tmp_path)],
        input="prompted passphrase\nprompted passphrase\n",
        capture_output=True,
        text=True,
        env=env,
        start_new_session=True,  # no controlling terminal: the prompt reads stdin
        check=False,
    )
    assert out.returncode == 0, out.stderr
    ok = run(
        "kiln",
        "keys",
        "export",
        str(tmp_path / "k1.key"),
        env={"EDGEKILN_KEY_PASSPHRASE": "prompted passphrase"},
    )
    assert ok.returncode == 0 and "# key id" in ok.stdout


def test_allow_downgrade_from_the_cli_is_signed(release: dict[str, Path]) -> None:
    d = release["dir"]
    common = ["--slot-image", str(release["image"]), "--product", "acme-cam"]
    common += ["--target", "generic-x86-64", "--security-version", "3"]
    common += ["--key", str(d / "keys/rel1.key")]
    for flag, name in (([], "plain.bundle"), (["--allow-downgrade"], "down.bundle")):
        out = run("kiln", "bundle", *common, "--version", "1.0.0", *flag, "-o", str(d / name))
        assert out.returncode == 0, out.stderr
    info = json.loads(run("appliance", "bundle", "info", "--json", str(d / "down.bundle")).stdout)
    assert info["allow_downgrade"] is True
    info = json.loads(run("appliance", "bundle", "info", "--json", str(d / "plain.bundle")).stdout)
    assert info["allow_downgrade"] is False
    assert b"allow_downgrade" not in (d / "plain.bundle").read_bytes()  # omitted: canonical
    out = run(
        "appliance", "bundle", "verify", str(d / "down.bundle"), "--keyring", str(release["ring"])
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.integration
def test_bundle_level_must_match_the_level_baked_into_the_slot(
    release: dict[str, Path], tmp_path: Path
) -> None:
    """The device's floor reads the running slot's device.json: a bundle must sign that level."""
    tree = tmp_path / "tree" / "etc" / "edgekiln"
    tree.mkdir(parents=True)
    (tree / "device.json").write_text(json.dumps({"version": "1.4.0", "security_version": 2}))
    slot = tmp_path / "slot.ext4"
    made = subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-d", str(tmp_path / "tree"),
         str(slot), "4M"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    common = ["--slot-image", str(slot), "--product", "acme-cam", "--target", "generic-x86-64"]
    common += ["--version", "1.4.0", "--key", str(release["dir"] / "keys/rel1.key")]
    out = run("kiln", "bundle", *common, "--security-version", "3", "-o", str(tmp_path / "x"))
    assert out.returncode != 0
    assert (
        "bakes security_version 2 (its /etc/edgekiln/device.json) but the bundle would sign 3"
        in (out.stderr)
    )
    assert not (tmp_path / "x").exists()
    out = run("kiln", "bundle", *common, "--security-version", "2", "-o", str(tmp_path / "y"))
    assert out.returncode == 0, out.stderr
