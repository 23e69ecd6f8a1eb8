#!/usr/bin/env python3
"""Boot an edgekiln image in QEMU (same as ``kiln vm``); see image/vm/qemu.py for the library."""

from __future__ import annotations

from image.vm.cli import vm

if __name__ == "__main__":
    vm()
