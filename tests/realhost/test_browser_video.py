"""Real host, browser: an MP4 result plays in the panel's result area.

Generate with MP4 and GIF selected: a ``<video>`` under the gallery gets the MP4 (a gallery cannot
show one), it loads, loops, and its duration is frames / FPS; the gallery still shows the GIF.
"""

from __future__ import annotations

import pytest
from test_browser import GENERATE_TIMEOUT_MS, PANEL, browser, open_page, set_number  # noqa: F401

pytestmark = pytest.mark.realhost

FRAMES, FPS = 8, 4


def test_mp4_plays_under_the_gallery(browser, ui_server, artifacts_dir):  # noqa: F811
    page = open_page(browser, ui_server)
    page.fill("#txt2img_prompt textarea", "a photo of a cat")
    for field, value in (("width", "64"), ("height", "64"), ("steps", "2")):
        set_number(page, f"#txt2img_{field} input[type=number]", value)
    page.click(f"{PANEL}accordion .label-wrap")
    page.locator(f"{PANEL}enable input[type=checkbox]").check()
    set_number(page, f"{PANEL}video_length input", str(FRAMES))
    set_number(page, f"{PANEL}fps input", str(FPS))
    page.locator(f"{PANEL}format label", has_text="MP4").locator("input").check()
    page.click("#txt2img_generate")

    page.wait_for_selector("#txt2img_gallery img[src*='.gif']", timeout=GENERATE_TIMEOUT_MS)
    video = page.wait_for_selector("#animatediff_txt2img_video video[src*='.mp4']", timeout=30_000)
    state = page.evaluate(
        """(v) => new Promise((done) => {
            const report = () => done({duration: v.duration, loop: v.loop, error: v.error && v.error.code});
            if (v.readyState >= 1 || v.error) report();
            v.addEventListener("loadedmetadata", report);
            v.addEventListener("error", report);
            setTimeout(report, 20000);
        })""",
        video,
    )
    page.screenshot(path=str(artifacts_dir / "realhost-browser-video.png"))
    assert state["error"] is None, f"the browser cannot play the MP4 (media error {state['error']})"
    assert state["loop"] and abs(state["duration"] - FRAMES / FPS) < 0.2, state
    link = page.locator("#animatediff_txt2img_video a")
    assert link.get_attribute("href") == video.get_attribute("src")
    assert page.locator("#txt2img_gallery img[src*='.gif']").count() >= 1  # the GIF stays in the gallery
    page.close()
