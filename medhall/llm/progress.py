"""A rich progress display for long batches: done/total, rate, ETA, tokens, cost, failures."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from medhall.llm.types import ChatResult


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.1f} req/s", style="progress.data.speed")


class BatchProgress:
    """Context manager; :meth:`update` once per finished result. Disabled: does nothing."""

    def __init__(self, total: int, *, enabled: bool = True, description: str = "LLM calls") -> None:
        import sys

        self.enabled = enabled and total > 0 and sys.stderr.isatty()  # a terminal only: logs stay clean
        self.tokens = self.failed = self.cached = 0
        self.cost = 0.0
        self._progress: Progress | None = None
        self._task = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[tokens]:,} tok"),
                TextColumn("${task.fields[cost]:.4f}"), TextColumn("{task.fields[cached]:,} cached"),
                TextColumn("[red]{task.fields[failed]:,} failed"), console=Console(stderr=True),
            )
            self._task = self._progress.add_task(description, total=total, tokens=0, cost=0.0, cached=0, failed=0)

    def __enter__(self) -> BatchProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, result: ChatResult) -> None:
        if self._progress is None or self._task is None:
            return
        self.tokens += result.usage.prompt_tokens + result.usage.completion_tokens
        self.cost += result.cost_usd
        self.cached += result.cached
        self.failed += not result.ok
        self._progress.update(self._task, advance=1, tokens=self.tokens, cost=self.cost,
                              cached=self.cached, failed=self.failed)


class ItemProgress:
    """A progress bar (done/total, rate, ETA) for a long local loop (answers, scores); shown only
    on a terminal, so logs and pipes stay clean. :meth:`advance` once per ``n`` items done."""

    def __init__(self, total: int, description: str, *, unit: str = "items") -> None:
        import sys

        self._progress: Progress | None = None
        if total > 0 and sys.stderr.isatty():
            unit_column = TextColumn(f"{{task.fields[rate]}} {unit}/s")
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      unit_column, TimeRemainingColumn(), console=Console(stderr=True),
                                      transient=False)
            self._task = self._progress.add_task(description, total=total, rate="-")

    def __enter__(self) -> ItemProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)
            speed = self._progress.tasks[0].speed
            self._progress.update(self._task, rate=f"{speed:,.1f}" if speed else "-")
