"""The one reversible record of every change AnimateDiff makes to WebUI objects.

Each change is a named step: ``apply`` runs now and ``undo`` is registered before the next step
starts, so a failure part-way unwinds exactly what was done, newest first. ``close`` undoes all
remaining steps, is idempotent, and keeps undoing after an undo fails (the first error is
re-raised at the end, after everything else was restored).

The steps themselves are listed in ``host_changes``; this file is only the undo stack. Imports
no WebUI module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("animatediff")

Undo = Callable[[], None]


class PatchSession:
    """An ordered stack of (name, undo) pairs over host objects."""

    def __init__(self, label: str = "AnimateDiff"):
        self.label = label
        self._undo: list[tuple[str, Undo]] = []
        self.closed = False

    @property
    def step_names(self) -> list[str]:
        return [name for name, _ in self._undo]

    def step(self, name: str, apply: Callable[[], Any], undo: Undo | Callable[[Any], None]) -> Any:
        """Run ``apply``; register ``undo`` (called with apply's result if it takes one argument).

        If ``apply`` raises, nothing is registered for this step and the exception propagates;
        the steps before it stay registered until ``close``.
        """
        if self.closed:
            raise RuntimeError(f"{self.label}: patch session already closed; cannot apply {name!r}")
        result = apply()
        if _takes_argument(undo):
            self._undo.append((name, lambda: undo(result)))  # type: ignore[call-arg]
        else:
            self._undo.append((name, undo))  # type: ignore[arg-type]
        log.debug("%s: applied %s", self.label, name)
        return result

    def push(self, name: str, undo: Undo) -> None:
        """Register an undo for a change the caller already made."""
        if self.closed:
            raise RuntimeError(f"{self.label}: patch session already closed; cannot register {name!r}")
        self._undo.append((name, undo))

    def close(self) -> None:
        """Undo every step, newest first. Safe to call more than once."""
        first_error: BaseException | None = None
        while self._undo:
            name, undo = self._undo.pop()
            try:
                undo()
                log.debug("%s: undid %s", self.label, name)
            except BaseException as error:  # keep restoring the rest; report the first failure
                log.error("%s: undoing %s failed: %s", self.label, name, error)
                first_error = first_error or error
        self.closed = True
        if first_error is not None:
            raise first_error

    def __enter__(self) -> PatchSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _takes_argument(fn: Callable[..., Any]) -> bool:
    import inspect

    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return False
    return len(params) == 1
