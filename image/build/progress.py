"""Rich progress for the build stages (one line per stage, spinner while it runs)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from image.build.report import Observer, StageResult
from image.recipe import MIB


class RichObserver(Observer):
    """Draws each stage as a progress line; a finished stage shows cache hit, time and size."""

    def __init__(self, label: str = "build", console: Console | None = None) -> None:
        self.label = label
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            console=console or Console(stderr=True), transient=False,
        )  # fmt: skip
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichObserver:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def start(self, stage: str, what: str) -> None:
        self.tasks[stage] = self.progress.add_task(
            f"[bold]{self.label}[/] {stage}: {what}", total=1
        )

    def done(self, result: StageResult) -> None:
        cache = "[green]cached[/]" if result.cached else "built"
        size = f", {result.size / MIB:.1f} MiB" if result.size else ""
        detail = f", {result.detail}" if result.detail else ""
        self.progress.update(
            self.tasks[result.name],
            completed=1,
            description=(
                f"[bold]{self.label}[/] {result.name}: {cache} in "
                f"{result.seconds:.1f} s{size}{detail}"
            ),
        )
