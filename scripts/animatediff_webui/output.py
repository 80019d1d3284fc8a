"""Host seam for output: the WebUI's ``Processed`` -> per-video frames -> the engine's exporter ->
what the UI gallery and the API show.

Called in ``postprocess``. ``Processed.images`` holds an optional grid first
(``index_of_first_image == 1``), then the video's frames per batch-count iteration,
each possibly followed by a mask and a mask composite (img2img "return mask" options); one
infotext per generated frame. We cut that into videos, export each, and replace the images: file
paths for the gallery (GIF/WebP animate), base64 strings for the API (a ``str`` passes through the
API unchanged), or the first frame of each video for an XYZ grid (written by
``host_changes.video_results``). WebUI modules are imported lazily, inside functions.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from motion_module.color_match import match_colors
from motion_module.export import API_VIDEO_ORDER, ExportResult, VideoTarget, api_images, export
from motion_module.interpolation import Interpolator, optical_flow_interpolator
from motion_module.params import AnimateDiffParams, ExportParams, Interp

from . import host_changes

log = logging.getLogger("animatediff")

FILM_MODEL = "film_net_fp16.pt"


@dataclass(frozen=True)
class VideoFrames:
    """One batch-count iteration's frames, with the seed of its first frame and its infotext."""

    frames: list[Image.Image]
    seed: int
    info: str


@dataclass
class ExportReport:
    videos: list[ExportResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line per failed format per video

    @property
    def paths(self) -> list[Path]:
        return [path for video in self.videos for path in video.paths.values()]


def export_processed(
    p: Any,
    processed: Any,
    params: AnimateDiffParams,
    *,
    for_grid: bool = False,
    interpolator: Interpolator | None = None,
    outdir: str | None = None,
) -> ExportReport:
    """Export every video in ``processed`` and put the results where the UI/API will read them.

    ``for_grid``: an XYZ-plot cell; show each video's first frame so the grid can be drawn.
    ``interpolator``: None finds FILM (Deforum) when interpolation is on, else the engine's
    optical flow. ``outdir``: defaults to ``p.outpath_samples``.
    """
    videos = split_videos(processed, frames=params.frames)
    if params.export.interp is not Interp.OFF and interpolator is None:
        interpolator = find_film_interpolator()
    report = ExportReport()
    folder = outdir or p.outpath_samples
    reference = _colour_reference(p) if params.extras.color_match else None
    for video in videos:
        frames = match_colors(video.frames, reference) if params.extras.color_match else video.frames
        target = VideoTarget(folder, video.seed, video.info, params.request_id, params.extras.audio or None)
        result = export(frames, params.export, params.window, target, interpolator=interpolator)
        report.videos.append(result)
        report.errors += list(result.errors.values())
    show_results(p, processed, params.export, report, videos, for_grid=for_grid)
    return report


def _colour_reference(p: Any) -> Any:
    """Colour matching's reference: the init image in img2img, else each video's first frame."""
    images = getattr(p, "init_images", None) or []
    return images[0] if images else None


def split_videos(processed: Any, *, frames: int) -> list[VideoFrames]:
    """Cut ``processed.images`` into videos of ``frames`` frames (see module docstring)."""
    offset = int(getattr(processed, "index_of_first_image", 0) or 0)
    images = list(processed.images[offset:])
    infotexts = list(processed.infotexts[offset:])
    generated = min(len(infotexts), len(images)) or len(images)
    if generated == 0:
        return []
    stride = len(images) // generated  # 1 + masks returned per frame
    if len(images) != generated * stride:
        raise RuntimeError(
            f"AnimateDiff cannot split {len(images)} images into {generated} frames: expected one image per "
            "frame, or the same number of extra mask images after each frame"
        )
    kept = images[::stride]
    seeds = list(getattr(processed, "all_seeds", None) or [getattr(processed, "seed", -1)])
    return [
        VideoFrames(
            frames=kept[start : start + frames],
            seed=int(seeds[start] if start < len(seeds) else seeds[0]),
            info=infotexts[start] if start < len(infotexts) else "",
        )
        for start in range(0, len(kept), frames)
    ]


def show_results(
    p: Any,
    processed: Any,
    params: ExportParams,
    report: ExportReport,
    videos: list[VideoFrames],
    *,
    for_grid: bool,
) -> None:
    """Replace ``processed.images``/``infotexts`` with what the caller of the job should see."""
    note = "AnimateDiff export problems:\n" + "\n".join(report.errors) if report.errors else ""
    if for_grid:
        shown: list[Any] | None = [video.frames[0] for video in videos if video.frames]
        infos = [video.info for video in videos if video.frames]
    elif getattr(p, "is_api", False):
        shown = api_images(report.videos, params.formats)
        infos = [r.info for r in report.videos for fmt in API_VIDEO_ORDER if fmt in r.paths]
        infos += [r.info for r in report.videos for _ in r.frames][: len(shown) - len(infos)]
    else:
        pairs = [
            (str(r.paths[fmt]), r.info) for r in report.videos for fmt in API_VIDEO_ORDER if fmt in r.paths
        ]
        # nothing playable was written (PNG/TXT only, or every encoder failed): keep the frames
        shown = [path for path, _ in pairs] if pairs else None
        infos = [info for _, info in pairs]
    host_changes.video_results(processed, shown, infos, note)


# ---------------------------------------------------------------------------------------------
# FILM from the Deforum extension


def find_film_interpolator() -> Interpolator | None:
    """FILM from an installed Deforum extension, wrapped to our ``Interpolator`` signature.

    Deforum puts its ``film_interpolation`` package on ``sys.path`` when it loads; if it is not
    importable, Deforum is absent and the engine's optical flow is used (returns None).
    """
    try:
        film = importlib.import_module("film_interpolation.film_inference")
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == "film_interpolation":
            log.info("AnimateDiff: Deforum's FILM not found; interpolating with the built-in optical flow")
        else:
            log.warning("AnimateDiff: Deforum's FILM did not import (%s); using the built-in optical flow", e)
        return None
    from modules import paths  # lazy: WebUI only

    model_dir = Path(paths.models_path) / "Deforum" / "film_interpolation"
    log.info("AnimateDiff: interpolating with Deforum's FILM (%s)", model_dir / FILM_MODEL)
    return film_interpolator(film.run_film_interp_infer, model_dir, _film_model_fetcher())


def _film_model_fetcher():
    try:
        helpers = importlib.import_module("deforum_helpers.frame_interpolation")
    except ImportError:
        return None
    return getattr(helpers, "check_and_download_film_model", None)


def film_interpolator(run_film, model_dir: Path, fetch_model=None) -> Interpolator:
    """Adapt Deforum's folder-based FILM runner; fall back to optical flow if it fails.

    ``run_film(model_path, input_folder, save_folder, inter_frames)`` writes (N-1)·(k+1)+1 frames
    named in order into ``save_folder`` for k in-betweens per pair, which is our X = k + 1.
    """

    def interpolate(frames: Sequence[Image.Image], x: int) -> list[Image.Image]:
        expected = (len(frames) - 1) * x + 1
        try:
            if fetch_model is not None:
                fetch_model(FILM_MODEL, str(model_dir))
            with tempfile.TemporaryDirectory(prefix="animatediff-film-") as tmp:
                source, target = Path(tmp) / "in", Path(tmp) / "out"
                source.mkdir()
                for i, frame in enumerate(frames):
                    frame.save(source / f"{i:05d}.png")
                run_film(
                    model_path=str(model_dir / FILM_MODEL),
                    input_folder=str(source),
                    save_folder=str(target),
                    inter_frames=x - 1,
                )
                out = [Image.open(path).convert("RGB") for path in sorted(target.glob("*.png"))]
            if len(out) != expected:
                raise RuntimeError(f"FILM returned {len(out)} frames, expected {expected}")
        except Exception as e:  # reported, then the built-in interpolation still delivers a video
            log.error(
                "AnimateDiff: FILM interpolation failed (%s); using the built-in optical flow instead", e
            )
            return optical_flow_interpolator(frames, x)
        out[0], out[-1] = frames[0], frames[-1]  # the end frames stay bit-exact
        return out

    return interpolate
