"""Shared fixtures of the image builder tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


def make_model_package(path: Path, payload: bytes = b"\0" * 1024) -> Path:
    """A directory shaped like a model package (enough for the recipe and overlay stages)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.json").write_text(json.dumps({"format": 1, "name": path.name}))
    (path / "model.onnx").write_bytes(payload)
    return path


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    """A copy of the real recipes/*.toml with small model packages beside them."""
    out = tmp_path / "recipes"
    out.mkdir()
    for toml in RECIPES.glob("*.toml"):
        shutil.copy(toml, out / toml.name)
    make_model_package(out / "models" / "inspect-primary")
    make_model_package(out / "models" / "inspect-fallback")
    return out
