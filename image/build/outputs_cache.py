"""A build's output files (disk, bmap, compressed image, manifest, bundle), cached as one set.

The set lives in one folder of the kiln cache, filled under that folder's lock
(``image.cache.filling``): written into a scratch folder, ``outputs.json`` and ``complete`` last,
then swapped in by rename. A later build with the same outputs key copies it back (sparse) and
reports each output stage as a cache hit.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from image import cache
from image.build import fs
from image.build.report import Observer, StageResult

#: The stages whose results travel with the cached set.
OUTPUT_STAGES = ("disk", "bmap", "compress", "manifest", "bundle")


def store(
    cached: Path, outputs: dict[str, str], stages: list[StageResult], partitions: Any
) -> None:
    """Copy ``outputs`` (name -> path) into a scratch folder and swap it in as ``cached``."""
    tmp = cache.scratch(cached)
    for path in outputs.values():
        fs.run_tool(["cp", "--sparse=always", "--reflink=auto", path, str(tmp)])
    doc = {
        "outputs": {name: Path(path).name for name, path in outputs.items()},
        "stages": [asdict(s) for s in stages if s.name in OUTPUT_STAGES],
        "partitions": partitions,
    }
    (tmp / "outputs.json").write_text(json.dumps(doc, sort_keys=True))
    (tmp / "complete").write_text("ok\n")
    cache.remove_tree(cached)  # an incomplete earlier attempt
    tmp.rename(cached)


def restore(
    cached: Path, outdir: Path, observer: Observer
) -> tuple[Any, dict[str, str], list[StageResult]]:
    """Copy a cached set into ``outdir``: (partitions, outputs, the stages as cache hits)."""
    doc = json.loads((cached / "outputs.json").read_text())
    start = time.monotonic()
    outputs: dict[str, str] = {}
    for name, filename in sorted(doc["outputs"].items()):
        fs.run_tool(["cp", "--sparse=always", "--reflink=auto", str(cached / filename),
                     str(outdir)])  # fmt: skip
        outputs[name] = str(outdir / filename)
    seconds = round(time.monotonic() - start, 2)
    stages = []
    for stage in doc["stages"]:
        observer.start(stage["name"], "cached output")
        copied = seconds if stage["name"] == "disk" else 0.0
        result = StageResult(**{**stage, "cached": True, "seconds": copied})
        stages.append(result)
        observer.done(result)
    return doc["partitions"], outputs, stages
