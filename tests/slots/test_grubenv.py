"""The GRUB environment block against the real ``grub-editenv``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.slots import grubenv
from appliance.slots.errors import EnvFormatError
from appliance.slots.grub import grub_loader, initial_env
from appliance.slots.grubenv import GrubEnvStore

needs_editenv = pytest.mark.skipif(shutil.which("grub-editenv") is None, reason="grub-editenv")
names = st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True)
values = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)


def editenv(path: Path, *args: str) -> str:
    out = subprocess.run(["grub-editenv", str(path), *args], capture_output=True, check=True)
    return out.stdout.decode()


@needs_editenv
@pytest.mark.integration
def test_block_is_byte_identical_to_grub_editenv(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    editenv(theirs, "create")
    assert theirs.read_bytes() == grubenv.render({})
    pairs = {"ek_committed": "B", "ek_try": "", "weird": "back\\slash\nnewline"}
    for name, value in pairs.items():
        editenv(theirs, "set", f"{name}={value}")
    assert theirs.read_bytes() == grubenv.render(pairs)
    assert grubenv.parse(theirs.read_bytes()) == pairs


@needs_editenv
@pytest.mark.integration
def test_grub_editenv_reads_and_edits_what_the_loader_writes(tmp_path: Path) -> None:
    loader = grub_loader(tmp_path)
    (tmp_path / "grub").mkdir()
    for name in ("grubenv", "grubenv.bak"):
        (tmp_path / "grub" / name).write_bytes(initial_env())
    loader.deactivate("B")
    loader.begin_try("B")
    for name in ("grubenv", "grubenv.bak"):
        listed = editenv(tmp_path / "grub" / name, "list")
        assert listed == "ek_committed=A\nek_try=B\nek_tries_left=1\nek_bad=\n"
    editenv(tmp_path / "grub" / "grubenv", "set", "ek_tries_left=0", "next_entry=x")
    state = loader.read()
    assert (state.trying, state.tries_left) == ("B", 0)
    loader.commit("B")
    assert grubenv.parse((tmp_path / "grub" / "grubenv").read_bytes()) == {
        "ek_committed": "B",
        "ek_try": "",
        "ek_tries_left": "0",
        "ek_bad": "",
        "next_entry": "x",
    }


@given(st.dictionaries(names, values, max_size=8))
def test_render_parse_round_trip(variables: dict[str, str]) -> None:
    try:
        block = grubenv.render(variables)
    except EnvFormatError:
        return
    assert len(block) == grubenv.BLOCK_SIZE
    assert grubenv.parse(block) == variables


@given(st.binary(max_size=1100))
def test_parse_never_raises_on_garbage(data: bytes) -> None:
    result = grubenv.parse(data)
    assert result is None or isinstance(result, dict)
    result = grubenv.parse(grubenv.SIGNATURE + data)
    assert isinstance(result, dict) if data else result is None


@pytest.mark.parametrize(
    "variables",
    [{"bad name": "x"}, {"": "x"}, {"a=b": "x"}, {"x": "y" * 1000}],
)
def test_render_refuses_bad_names_and_overflow(variables: dict[str, str]) -> None:
    with pytest.raises(EnvFormatError):
        grubenv.render(variables)


def test_store_writes_backup_first_and_reads_backup_when_primary_is_torn(tmp_path: Path) -> None:
    store = GrubEnvStore(tmp_path / "grubenv")
    store.write({"ek_committed": "B"})
    assert store.backup.read_bytes() == store.primary.read_bytes()
    store.primary.write_bytes(store.primary.read_bytes()[:30])
    loader = grub_loader(tmp_path)  # different layout: grub/ under tmp_path, nothing there
    assert loader.read().committed == "A"
    from appliance.slots.loader import EkCodec, EnvLoader

    assert EnvLoader("grub", store, EkCodec()).read().committed == "B"
