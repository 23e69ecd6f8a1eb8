"""The build report (build-report.json / .txt) and the hooks that show a build's progress."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from image.recipe import MIB


@dataclass
class StageResult:
    """What one stage did: cache hit or not, time, output size, key."""

    name: str
    cached: bool
    seconds: float
    size: int = 0
    key: str = ""
    detail: str = ""


@dataclass
class BuildReport:
    """The build report: per stage results plus the produced files."""

    recipe: str
    recipe_digest: str
    version: str
    target: str
    stages: list[StageResult] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    def summary(self) -> str:
        """A readable table: stage, cache, seconds, size."""
        lines = [
            f"build of {self.target} {self.version} ({self.recipe})",
            f"{'stage':<10} {'cache':<6} {'seconds':>8} {'size MiB':>10}  detail",
        ]
        for s in self.stages:
            cache = "hit" if s.cached else "miss"
            lines.append(
                f"{s.name:<10} {cache:<6} {s.seconds:>8.1f} {s.size / MIB:>10.1f}  {s.detail}"
            )
        lines.append(f"{'total':<10} {'':<6} {self.seconds:>8.1f}")
        for name, path in sorted(self.outputs.items()):
            lines.append(f"{name}: {path}")
        return "\n".join(lines) + "\n"


class Observer:
    """Progress hooks; the CLI draws them with rich, tests ignore them."""

    def start(self, stage: str, what: str) -> None:
        """A stage begins."""

    def done(self, result: StageResult) -> None:
        """A stage ended."""
