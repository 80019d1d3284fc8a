"""How a job stops: the error the user sees, its HTTP status, and arming ``p`` to raise it.

The WebUI swallows exceptions raised in script hooks and callbacks and carries on, which would
turn a failed AnimateDiff job into a batch of unrelated stills. So a hook never raises: it
restores the host and arms ``p`` (``host_changes.stop_the_job``) so that the next step the WebUI
takes outside the hooks raises ``AnimateDiffError``. The UI shows its message; the API maps
``status_code``/``detail`` to the HTTP error (the WebUI's api.py reads both attributes).
"""

from __future__ import annotations

import logging
from typing import Any

from motion_module.injection import InjectionError
from motion_module.loading import MotionModuleLoadError

from . import host_changes
from .patch_session import PatchSession

log = logging.getLogger("animatediff")


class AnimateDiffError(RuntimeError):
    """Stops a job. ``status_code``/``detail`` become the API's HTTP error."""

    def __init__(self, message: str, status_code: int = 500):
        super().__init__(message)
        self.status_code = status_code
        self.detail = message


# Errors the user fixes (a value, a file, a module that does not fit): HTTP 422, no type name.
USER_ERRORS = (ValueError, AnimateDiffError, InjectionError, MotionModuleLoadError, OSError)


def status(error: BaseException) -> int:
    return 422 if isinstance(error, USER_ERRORS) else 500


def describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, USER_ERRORS) else f"{type(error).__name__}: {text}"


def as_error(error: BaseException | str, status_code: int | None = None) -> AnimateDiffError:
    """The user-facing error for an exception (or a message), prefixed "AnimateDiff"."""
    if isinstance(error, AnimateDiffError):
        return error
    message = error if isinstance(error, str) else describe(error)
    code = status_code if status_code is not None else (422 if isinstance(error, str) else status(error))
    return AnimateDiffError(message if message.startswith("AnimateDiff") else f"AnimateDiff: {message}", code)


def arm(p: Any, error: AnimateDiffError) -> None:
    """Log ``error`` once and make the WebUI raise it at its next step; ``p.close()`` disarms."""
    log.error("%s", error)
    host_changes.stop_the_job(PatchSession("AnimateDiff failure"), p, error)
