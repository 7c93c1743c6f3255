"""Running a core generator in a napari thread worker: progress bars, Cancel, errors in words."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from magicgui.widgets import Label, ProgressBar, PushButton

from ..errors import BNAdaptError
from ..progress import Progress
from .groups import reveal


def friendly_error(exc: BaseException) -> str:
    """One sentence for the user: their input's problem as is, anything else briefly."""
    if isinstance(exc, BNAdaptError):
        return str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "not enough memory: try a smaller tile size / batch size, or crop the stack"
    return f"unexpected error ({type(exc).__name__}: {exc}); see the napari console for details"


class _Failed:
    """An exception raised by a run, carried as its return value."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class Runner:
    """One long run at a time, with a progress bar, a Cancel button and a status line.

    Parameters
    ----------
    progress : ProgressBar
        The widget's own progress bar.
    status : Label
        Where messages go (errors in red).
    cancel : PushButton
        Enabled only while running; stops the run at its next progress step.
    run_buttons : list of PushButton
        Disabled while running.
    """

    def __init__(self, progress: ProgressBar, status: Label, cancel: PushButton, run_buttons: list[PushButton]) -> None:
        self.progress = progress
        self.status = status
        self.cancel = cancel
        self.run_buttons = run_buttons
        self.worker: Any = None
        self._links: list[tuple[Any, Callable[..., Any]]] = []
        self._pbr: Any = None
        self._stage = ""
        cancel.enabled = False
        cancel.changed.connect(self.request_cancel)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def say(self, text: str, error: bool = False) -> None:
        """Show a message in the status line (red for errors)."""
        self.status.value = text
        self.status.native.setStyleSheet("color: #ff6b6b;" if error else "")
        reveal(self.status.native)  # a panel scrolled elsewhere (a short screen) shows its message

    def start(self, func: Callable[[], Generator[Progress, None, Any]], on_done: Callable[[Any], None], desc: str) -> Any:
        """Run ``func`` (a generator function yielding Progress and returning the result) in a thread."""
        from napari.qt.threading import create_worker
        from napari.utils import progress as napari_progress

        if self.running:
            return None

        def guarded() -> Generator[Progress, None, Any]:
            # superqt's generator workers swallow a RuntimeError (torch raises those) without
            # emitting errored or finished: catch everything here and hand it over as a value
            try:
                return (yield from func())
            except Exception as exc:  # noqa: BLE001 - shown to the user in words
                return _Failed(exc)

        def returned(value: Any) -> None:
            if isinstance(value, _Failed):
                self.say(friendly_error(value.exc), error=True)
            else:
                on_done(value)

        worker = create_worker(guarded, _start_thread=False)
        self._links = [
            (worker.yielded, self._on_progress),
            (worker.returned, returned),
            (worker.errored, lambda e: self.say(friendly_error(e), error=True)),
            (worker.aborted, lambda: self.say("cancelled: nothing was changed")),
            (worker.finished, self._on_finished),
        ]
        for signal, slot in self._links:
            signal.connect(slot)
        self.worker = worker
        self._pbr = napari_progress(total=0, desc=desc)
        self._stage = ""
        self.progress.value = 0
        for b in self.run_buttons:
            b.enabled = False
        self.cancel.enabled = True
        self.say(f"{desc}...")
        worker.start()
        return worker

    def request_cancel(self) -> None:
        """Ask the running worker to stop at its next progress step."""
        if self.worker is not None:
            self.say("cancelling...")
            self.worker.quit()

    def _on_progress(self, p: Progress) -> None:
        if not isinstance(p, Progress):
            return
        total = max(p.total, 1)
        # a local reference: updating the bar can process events, and a fast job may finish
        # (and close the bar) in between
        pbr = self._pbr
        if p.stage != self._stage:
            self._stage = p.stage
            self.say(f"{p.stage}...")
            if pbr is not None:
                pbr.set_description(p.stage)
                pbr.total = total
                pbr.n = 0
        self.progress.max = total
        self.progress.value = min(p.done, total)
        self.progress.label = p.stage
        if pbr is not None and self._pbr is pbr:
            pbr.update(p.done - pbr.n)

    def _on_finished(self) -> None:
        if self._pbr is not None:
            self._pbr.close()
            self._pbr = None
        self.worker = None
        # napari's task-status registry keeps finished workers: cut their links to this widget
        # (only ours: others may still be waiting for this very signal), so a closed widget and
        # the models it holds can be freed
        links, self._links = self._links, []
        for signal, slot in links:
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):  # already disconnected
                pass
        for b in self.run_buttons:
            b.enabled = True
        self.cancel.enabled = False
