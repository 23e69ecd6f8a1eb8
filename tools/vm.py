#!/usr/bin/env python3
"""Boot an edgekiln image in QEMU (same as ``kiln vm``); see image/vm.py for the library."""

from __future__ import annotations

from image.vm_cli import vm

if __name__ == "__main__":
    vm()
