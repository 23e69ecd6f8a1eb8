"""Recipes: TOML files with ``extends``, merged and validated before any build stage runs.

A recipe names a hardware target, the model packages, partition sizes and the base system. Files
are read with :mod:`tomllib`; ``extends = "base.toml"`` (relative to the file) pulls in a base
whose tables are merged key by key (lists and scalars of the child replace the base's). The merged
document is converted to the typed :class:`Recipe` with msgspec (unknown keys refused), then
checked against the target table and the file system. Every error names the file that set the
offending field and the field's dotted path.
"""

from __future__ import annotations

from image.recipe.checks import is_buildable, tree_size
from image.recipe.load import load_recipe
from image.recipe.schema import (
    MIB,
    TARGETS,
    LoadedRecipe,
    Models,
    Recipe,
    RecipeError,
    TargetSpec,
    canonical_json,
)

__all__ = [
    "MIB",
    "TARGETS",
    "LoadedRecipe",
    "Models",
    "Recipe",
    "RecipeError",
    "TargetSpec",
    "canonical_json",
    "is_buildable",
    "load_recipe",
    "tree_size",
]
