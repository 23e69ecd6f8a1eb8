"""U-Boot environment against libubootenv's fw_printenv/fw_setenv; boot.cmd through mkimage."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.slots import ubootenv
from appliance.slots.errors import EnvFormatError
from appliance.slots.loader import EkCodec, EnvLoader
from appliance.slots.state import BootState
from appliance.slots.uboot import render_boot_cmd, uboot_loader
from appliance.slots.ubootenv import EnvCopy, UBootEnvStore

SIZE = 0x2000
needs_fw = pytest.mark.skipif(shutil.which("fw_printenv") is None, reason="libubootenv-tool")


def setup_env(tmp_path: Path, redundant: bool = True) -> Path:
    lines = []
    for name in ("env0", "env1") if redundant else ("env0",):
        (tmp_path / name).write_bytes(b"\0" * SIZE)
        lines.append(f"{tmp_path / name} 0x0 {SIZE:#x}\n")
    config = tmp_path / "fw_env.config"
    config.write_text("".join(lines))
    (tmp_path / "default.env").write_text("bootdelay=1\n")
    # The board's default environment, where libubootenv looks for it (beside the config).
    (tmp_path / "u-boot-initial-env").write_text("bootdelay=1\n")
    return config


def fw(config: Path, tool: str, *args: str) -> str:
    out = subprocess.run(
        [tool, "-c", str(config), "-f", str(config.parent / "default.env"), *args],
        capture_output=True,
        check=True,
        text=True,
    )
    return out.stdout


@needs_fw
@pytest.mark.integration
@pytest.mark.parametrize("redundant", [True, False])
def test_fw_printenv_reads_what_we_write_and_we_read_fw_setenv(
    tmp_path: Path, redundant: bool
) -> None:
    config = setup_env(tmp_path, redundant)
    loader = uboot_loader(config)
    assert loader.read() == BootState()
    fw(config, "fw_setenv", "bootcmd", "run distro_bootcmd")
    loader.deactivate("B")
    loader.begin_try("B")
    printed = fw(config, "fw_printenv")
    assert printed == (
        "bootcmd=run distro_bootcmd\nbootdelay=1\nek_bad=\nek_committed=A\n"
        "ek_tries_left=1\nek_try=B\n"
    )
    # U-Boot's boot script counting the try down (saveenv), done here by fw_setenv.
    fw(config, "fw_setenv", "ek_tries_left", "0")
    assert loader.read() == BootState("A", "B", 0)
    loader.commit("B")
    assert fw(config, "fw_printenv", "ek_committed") == "ek_committed=B\n"
    assert loader.read() == BootState("B")


@needs_fw
@pytest.mark.integration
def test_our_copy_is_byte_identical_to_fw_setenv(tmp_path: Path) -> None:
    config = setup_env(tmp_path, redundant=False)
    fw(config, "fw_setenv", "zeta", "1")
    fw(config, "fw_setenv", "alpha", "x y")
    theirs = (tmp_path / "env0").read_bytes()
    ours = ubootenv.render_copy({"zeta": "1", "alpha": "x y", "bootdelay": "1"}, SIZE, False)
    data_end = ours.index(b"\0\0", 4) + 2
    assert theirs[:4] != b"\0\0\0\0"
    assert theirs[4:data_end] == ours[4:data_end]
    # The CRC covers the padding, which libubootenv leaves as whatever its buffer held.
    assert int.from_bytes(theirs[:4], "little") == zlib.crc32(theirs[4:])


@needs_fw
@pytest.mark.integration
def test_torn_write_at_every_offset_keeps_the_old_copy(tmp_path: Path) -> None:
    """A power cut during a write to either copy: the other copy wins, for us and libubootenv.

    Every offset is decided in memory by the function the store uses; a sample of offsets goes
    through the files, our loader and ``fw_printenv``.
    """
    config = setup_env(tmp_path)
    loader = EnvLoader("uboot", UBootEnvStore.from_config(config), EkCodec())
    loader.write(BootState("A"))
    loader.write(BootState("A", None, 0, frozenset({"B"})))  # "old": both copies valid
    old_files = [(tmp_path / n).read_bytes() for n in ("env0", "env1")]
    old_state = loader.read()
    flags = [ubootenv.parse_copy(b, True) for b in old_files]
    target = 1 - (ubootenv.current_copy([f[1] if f else None for f in flags]) or 0)
    new_state = BootState("A", "B", 1)
    new_block = ubootenv.render_copy(
        EkCodec().encode(new_state), SIZE, True, old_files[1 - target][4] + 1
    )
    codec = EkCodec()
    outcomes = set()
    for offset in range(SIZE + 1):
        torn = new_block[:offset] + old_files[target][offset:]
        copies = list(old_files)
        copies[target] = torn
        chosen = ubootenv.choose(copies)
        assert chosen is not None
        state = codec.decode(chosen)
        done = torn == new_block  # the rest may already hold the same padding
        assert state == (new_state if done else old_state), offset
        outcomes.add(state)
        if offset in (0, 4, 5, 37, 60, SIZE // 2, SIZE):
            (tmp_path / f"env{target}").write_bytes(torn)
            assert loader.read() == state
            printed = fw(config, "fw_printenv", "ek_try")
            assert printed == ("ek_try=B\n" if done else "ek_try=\n")
    assert len(outcomes) == 2


def test_flag_wraparound_and_choice() -> None:
    assert ubootenv.current_copy([0xFF, 0x00]) == 1
    assert ubootenv.current_copy([0x00, 0xFF]) == 0
    assert ubootenv.current_copy([3, 4]) == 1
    assert ubootenv.current_copy([4, 4]) == 0
    assert ubootenv.current_copy([None, 7]) == 1
    assert ubootenv.current_copy([None, None]) is None


def test_writes_alternate_copies_and_survive_flag_overflow(tmp_path: Path) -> None:
    copies = [EnvCopy(tmp_path / f"e{i}", 0x400, 0x800) for i in (0, 1)]
    (tmp_path / "initial").write_text("")
    store = UBootEnvStore(copies, tmp_path / "initial")
    for i in range(300):
        store.write({"n": str(i)})
        assert store.read_candidates() == [{"n": str(i)}]
    assert (tmp_path / "e0").stat().st_size == 0x400 + 0x800


def test_garbage_environment_reads_as_default(tmp_path: Path) -> None:
    copies = [EnvCopy(tmp_path / f"e{i}", 0, 0x1000) for i in (0, 1)]
    for c in copies:
        c.device.write_bytes(b"\x5a" * 0x1000)
    (tmp_path / "initial").write_text("bootcmd=run distro_bootcmd\n")
    loader = EnvLoader("uboot", UBootEnvStore(copies, tmp_path / "initial"), EkCodec())
    assert loader.read() == BootState()
    loader.deactivate("B")
    assert loader.read() == BootState("A", None, 0, frozenset({"B"}))


@given(st.binary(min_size=0, max_size=600), st.booleans())
def test_parse_copy_never_raises(data: bytes, redundant: bool) -> None:
    result = ubootenv.parse_copy(data, redundant)
    assert result is None or isinstance(result[0], dict)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z_.][a-z0-9_]{0,10}", fullmatch=True), st.text(max_size=30), max_size=10
    ),
    st.booleans(),
)
def test_render_parse_round_trip(variables: dict[str, str], redundant: bool) -> None:
    variables = {k: v.replace("\0", "") for k, v in variables.items()}
    block = ubootenv.render_copy(variables, 0x400, redundant, 9)
    assert ubootenv.parse_copy(block, redundant) == (variables, 9 if redundant else 0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/dev/x 0 0x1000\n/dev/y 0 0x2000\n",
        "/dev/x zero 0x1000",
        "/dev/x\n",
        "a 0 1\nb 0 1\nc 0 1\n",
    ],
)
def test_bad_fw_env_config_is_refused(text: str) -> None:
    with pytest.raises(EnvFormatError):
        ubootenv.parse_fw_env_config(text)


@pytest.mark.skipif(shutil.which("mkimage") is None, reason="needs mkimage (u-boot-tools)")
def test_boot_cmd_compiles_with_mkimage(tmp_path: Path) -> None:
    cmd = tmp_path / "boot.cmd"
    cmd.write_text(render_boot_cmd(cmdline="console=ttymxc0,115200"))
    subprocess.run(
        [
            "mkimage",
            "-A",
            "arm64",
            "-T",
            "script",
            "-C",
            "none",
            "-d",
            str(cmd),
            str(tmp_path / "boot.scr"),
        ],
        check=True,
        capture_output=True,
    )
    text = cmd.read_text()
    assert "saveenv" in text.split("setenv ek_slot ${ek_try}")[0]
    assert (
        "panic=10 edgekiln.trial=${ek_trial} edgekiln.slot=${ek_slot} console=ttymxc0,115200"
        in text
    )
    with pytest.raises(ValueError):
        render_boot_cmd(cmdline="a;reset")


@needs_fw
@pytest.mark.integration
def test_corrupt_byte_at_every_offset_of_the_current_copy(tmp_path: Path) -> None:
    """One flipped byte anywhere in the newest copy: the other copy is used (for the flag byte,
    which the CRC does not cover, either valid copy); never a garbled state."""
    config = setup_env(tmp_path)
    loader = EnvLoader("uboot", UBootEnvStore.from_config(config), EkCodec())
    old, new = BootState("A", None, 0, frozenset({"B"})), BootState("A", "B", 1)
    loader.write(old)
    loader.write(new)
    files = [(tmp_path / n).read_bytes() for n in ("env0", "env1")]
    current = 0 if files[0][4] > files[1][4] else 1
    for offset in range(SIZE):
        block = bytearray(files[current])
        block[offset] ^= 0xA5
        copies = list(files)
        copies[current] = bytes(block)
        chosen = ubootenv.choose(copies)
        assert chosen is not None
        state = EkCodec().decode(chosen)
        assert state == old or (offset == 4 and state == new), offset
    block = bytearray(files[current])
    block[100] ^= 0xA5
    (tmp_path / f"env{current}").write_bytes(bytes(block))
    assert loader.read() == old
    assert fw(config, "fw_printenv", "ek_try") == "ek_try=\n"
