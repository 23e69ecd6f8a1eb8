"""PyInstaller hook for ``textual.widgets``: its widgets are imported lazily by name.

``textual/widgets/__init__.py`` resolves ``from textual.widgets import Button`` through a module
``__getattr__`` that calls ``importlib.import_module``, which dependency analysis cannot follow;
without this hook the frozen TUI fails with "No module named 'textual.widgets._button'".
"""

from __future__ import annotations

from PyInstaller.utils.hooks import collect_submodules

hiddenimports = collect_submodules("textual.widgets")
