"""Reading a recipe: TOML files merged along ``extends``, then typed by msgspec, then checked.

Every field remembers the file that set it (``provenance``), so an error names that file and the
field's dotted path, also for a field a base recipe set.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

import msgspec

from image.recipe.checks import check
from image.recipe.schema import LoadedRecipe, Recipe, RecipeError, origin_of

_PATH_FIELDS = (
    "models.primary",
    "models.fallback",
    "rootfs.tarball",
    "signing.key",
    "runtime.prebuilt",
    "update.tuf_root",
    "board.bootloader",
)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(path, "", "file not found; check the path") from None
    except OSError as exc:
        raise RecipeError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(path, "", f"not valid TOML: {exc}") from None


def _merge(
    base: dict[str, Any],
    child: dict[str, Any],
    origin: Path,
    prov: dict[str, Path],
    prefix: str = "",
) -> dict[str, Any]:
    """Deep-merge tables; anything else in ``child`` replaces ``base``. Records field origins."""
    out = dict(base)
    for key, value in child.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origin, prov, dotted + ".")
        else:
            out[key] = value
            _mark(value, dotted, origin, prov)
    return out


def _mark(value: Any, dotted: str, origin: Path, prov: dict[str, Path]) -> None:
    # Drop stale origins below a replaced key, then record the new ones.
    for stale in [k for k in prov if k == dotted or k.startswith(dotted + ".")]:
        del prov[stale]
    prov[dotted] = origin
    if isinstance(value, dict):
        for key, sub in value.items():
            _mark(sub, f"{dotted}.{key}", origin, prov)


def _load_chain(path: Path, prov: dict[str, Path], seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(str(p) for p in (*seen, path))
        raise RecipeError(path, "extends", f"cycle in extends: {cycle}; remove one of the links")
    data = _read_toml(path)
    parent = data.pop("extends", None)
    merged: dict[str, Any] = {}
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise RecipeError(path, "extends", "must be a relative path string to a base recipe")
        merged = _load_chain(path.parent / parent, prov, (*seen, path))
    return _merge(merged, data, path, prov)


_AT_RE = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<at>[^`]*)`)?$")
_FIELD_RE = re.compile(r"field `(?P<name>[^`]+)`")


def _field_of(error: msgspec.ValidationError) -> tuple[str, str]:
    """(dotted field, message) out of a msgspec validation error."""
    match = _AT_RE.match(str(error))
    what = match.group("what") if match else str(error)
    at = (match.group("at") or "") if match else ""
    dotted = re.sub(r"\[(\d+)\]", r".\1", at).lstrip(".")
    named = _FIELD_RE.search(what)
    if named:
        dotted = f"{dotted}.{named.group('name')}".lstrip(".")
    return dotted, what


def _literal_choices(dotted: str) -> tuple[str, ...]:
    """Allowed values of a ``Literal`` field of :class:`Recipe`, for friendlier errors."""
    kind: Any = Recipe
    for part in dotted.split("."):
        hints = typing.get_type_hints(kind) if isinstance(kind, type) else {}
        if part not in hints:
            return ()
        kind = hints[part]
    if typing.get_origin(kind) is Literal:
        return tuple(str(a) for a in typing.get_args(kind))
    return ()


def load_recipe(path: Path | str, *, check_files: bool = True) -> LoadedRecipe:
    """Read, merge and validate a recipe; raise :class:`RecipeError` naming file and field.

    ``check_files`` also checks that referenced model packages (and a supplied tarball or
    prebuilt runtime) exist, and that the root partition can hold what goes into it.
    """
    top = Path(path).resolve()
    prov: dict[str, Path] = {}
    merged = _load_chain(top, prov, ())

    # Rebase path fields onto the top recipe's directory before typing, so an ``extends``
    # base can name its model packages relative to itself.
    for dotted in _PATH_FIELDS:
        table, _, key = dotted.partition(".")
        section = merged.get(table)
        if isinstance(section, dict) and isinstance(section.get(key), str):
            origin = origin_of(prov, dotted, top)
            absolute = (origin.parent / section[key]).resolve()
            section[key] = os.path.relpath(absolute, top.parent)

    board = merged.get("board")
    if isinstance(board, dict) and isinstance(board.get("firmware"), list):
        origin = origin_of(prov, "board.firmware", top)
        board["firmware"] = [
            os.path.relpath((origin.parent / f).resolve(), top.parent) if isinstance(f, str) else f
            for f in board["firmware"]
        ]
    try:
        recipe = msgspec.convert(merged, Recipe)
    except msgspec.ValidationError as exc:
        dotted, what = _field_of(exc)
        allowed = _literal_choices(dotted)
        if allowed:
            what += f"; use one of: {', '.join(allowed)}"
        raise RecipeError(origin_of(prov, dotted, top), dotted, what) from None

    loaded = LoadedRecipe(recipe, top, tuple(sorted(set(prov.values()) | {top})), prov)
    check(loaded, check_files=check_files)
    return loaded
