"""``POST /animatediff/v1/svd`` and ``GET /animatediff/v1/svd/models``, registered when the
WebUI's app starts (also under ``--nowebui``).

The request is a JSON object keyed like ``SvdParams`` (``image`` as base64, optionally a
``data:`` URL). The answer follows the AnimateDiff API's conventions: every written video file
base64-encoded, in GIF, MP4, WEBP, WEBM order (``video_formats`` says which is which), then the
frames as base64 PNGs only when ``Frame`` is among the formats. A refusal is HTTP 422 naming the
field; any other failure HTTP 500 with its message, logged once with the request's context.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from motion_module.export import API_VIDEO_ORDER, api_images
from motion_module.params import ExportFormat, ParamsError
from motion_module.svd.params import FIELDS

from . import failure, svd_job

log = logging.getLogger("animatediff")

ROUTE = "/animatediff/v1/svd"


def on_app_started(_demo: Any, app: Any) -> None:
    from fastapi import Body

    def generate(body: Any = Body(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's declaration)
        return handle(body)

    app.add_api_route(ROUTE, generate, methods=["POST"])
    app.add_api_route(ROUTE + "/models", models, methods=["GET"])


def models() -> dict[str, Any]:
    return {"folder": svd_job.model_folder(), "models": svd_job.model_choices()}


def handle(body: Any) -> dict[str, Any]:
    """One request, answered; raises FastAPI's ``HTTPException`` (422 / 500) on failure."""
    from fastapi import HTTPException

    if not isinstance(body, dict):
        keys = ", ".join(FIELDS)
        raise HTTPException(422, f"SVD: the request body must be a JSON object with the keys {keys}")
    try:
        params, image = svd_job.parse_request(body)
        outcome = svd_job.run(params, image)
    except Exception as error:
        code = failure.status(error)
        message = failure.describe(error)
        message = message if message.startswith("SVD") else f"SVD: {message}"
        if isinstance(error, ParamsError):
            log.error("%s", message)
        else:
            log.error(
                "SVD: the request for %s (%s) failed: %s",
                body.get("model") or "the first model",
                _summary(body),
                message,
                exc_info=code == 500,
            )
        raise HTTPException(code, message) from None
    return response(outcome)


def _summary(body: dict[str, Any]) -> str:
    keys = ("width", "height", "frames", "steps", "seed")
    return ", ".join(f"{key} {body[key]}" for key in keys if key in body) or "defaults"


def response(outcome: svd_job.SvdOutcome) -> dict[str, Any]:
    """The JSON answer of a finished (or interrupted) job."""
    results = [outcome.export] if outcome.export is not None else []
    items = api_images(results, outcome.params.formats)
    written = [fmt.value for result in results for fmt in API_VIDEO_ORDER if fmt in result.paths]
    errors = [message for result in results for message in result.errors.values()]
    return {
        "videos": items[: len(written)],
        "video_formats": written,
        "frames": items[len(written) :] if ExportFormat.FRAME in outcome.params.formats else [],
        "info": outcome.info,
        "seed": outcome.seed,
        "frame_count": len(outcome.frames),
        "interrupted": outcome.interrupted,
        "memory_plan": outcome.plan,
        "errors": errors,
        "parameters": echo(outcome.params),
    }


def echo(params: Any) -> dict[str, Any]:
    """The request's parameters as parsed (the image left out), JSON-ready."""
    values = {key: value for key, value in dataclasses.asdict(params).items() if key != "image"}
    values["formats"] = [fmt.value for fmt in params.formats]
    return values
