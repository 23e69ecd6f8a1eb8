"""Guest writes to a virtio disk, from QEMU's trace: where a power cut lands (tools/powercut.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: QEMU trace event emitted for each guest write request to a virtio-blk disk
WRITE_EVENT = "virtio_blk_handle_write"
SECTOR = 512
_WRITE_LINE = re.compile(
    WRITE_EVENT
    + r" vdev 0x[0-9a-f]+ req 0x[0-9a-f]+ sector (?P<sector>\d+) nsectors (?P<count>\d+)\n"
)


@dataclass(frozen=True)
class Write:
    """One guest write request to a virtio disk: byte offset and length."""

    offset: int
    length: int

    def overlap(self, start: int, end: int) -> int:
        """Bytes of this write that fall in [start, end)."""
        return max(0, min(self.offset + self.length, end) - max(self.offset, start))


def parse_writes(text: str) -> list[Write]:
    """The writes in QEMU's log-backend trace text (lines torn at the end are skipped)."""
    return [
        Write(int(m["sector"]) * SECTOR, int(m["count"]) * SECTOR)
        for m in _WRITE_LINE.finditer(text)
    ]


__all__ = ["SECTOR", "WRITE_EVENT", "Write", "parse_writes"]
