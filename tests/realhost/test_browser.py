"""Real host, browser: a person's path through the WebUI page in headless Chromium.

Opens the txt2img tab, opens the AnimateDiff accordion, ticks Enable, sets 8 frames, clicks
Generate and expects an animated GIF in the gallery; then pastes that result's infotext into a
fresh page and expects the panel restored and enabled. Screenshots go to artifacts/.
Needs Debian's ``chromium`` and the ``playwright`` package (its own browser downloads are never
used: ``executable_path`` points at the system Chromium).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.realhost

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 120_000  # the page is interactive after ~6 s here; slow only when broken
GENERATE_TIMEOUT_MS = 240_000
FRAMES = 8
PANEL = "#script_txt2img_animatediff_"  # the WebUI's elem_id scheme for our components


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (driven, not its browsers)"
    )
    if not Path(CHROMIUM).exists():
        pytest.skip(f"real browser: {CHROMIUM} missing (apt-get install -y chromium)")
    profile = tempfile.mkdtemp(prefix="realhost-chromium-")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def open_page(browser, server):
    """A fresh txt2img page; requests leave only for the test server (loopback)."""
    page = browser.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith(server.url) else route.abort()
    )
    page.goto(server.url + "/")
    try:
        page.wait_for_selector("#txt2img_prompt textarea", state="visible")
    except Exception as error:
        raise AssertionError(
            f"the WebUI page never became usable within {PAGE_TIMEOUT_MS // 1000} s "
            "(a frozen page, e.g. a javascript/ onUiUpdate callback that changes the DOM on every call): "
            f"{error}"
        ) from None
    return page


def set_number(page, selector: str, value: str) -> None:
    box = page.locator(selector)
    box.fill(value)
    box.press("Tab")  # gradio commits number inputs on blur


def test_generate_animation_then_paste_infotext(browser, ui_server, artifacts_dir):
    page = open_page(browser, ui_server)
    page.fill("#txt2img_prompt textarea", "a photo of a cat")
    for field, value in (("width", "64"), ("height", "64"), ("steps", "3")):
        set_number(page, f"#txt2img_{field} input[type=number]", value)
    page.fill("#txt2img_seed input", "99")

    page.click(f"{PANEL}accordion .label-wrap")
    enable = page.locator(f"{PANEL}enable input[type=checkbox]")
    enable.check()
    set_number(page, f"{PANEL}video_length input", str(FRAMES))
    page.click("#txt2img_generate")

    gallery_image = page.wait_for_selector("#txt2img_gallery img[src*='.gif']", timeout=GENERATE_TIMEOUT_MS)
    # the page finishes the job a progress poll later: Interrupt hides, the progress bar goes
    page.wait_for_selector("#txt2img_interrupt", state="hidden", timeout=30_000)
    page.screenshot(path=str(artifacts_dir / "realhost-browser-generated.png"))
    src = gallery_image.get_attribute("src")
    data = page.request.get(src if src.startswith("http") else f"{ui_server.url}/{src.lstrip('/')}").body()
    (artifacts_dir / "realhost-browser.gif").write_bytes(data)
    gif = Image.open(io.BytesIO(data))
    assert gif.format == "GIF" and gif.n_frames == FRAMES, (
        f"gallery shows {gif.format} with {gif.n_frames} frames"
    )
    infotext = page.locator("#html_info_txt2img").last.inner_text()
    assert "AnimateDiff" in infotext, f"the result's infotext has no AnimateDiff entry: {infotext!r}"

    # "Send to img2img" copies the panel (fields matched by name) to the img2img tab's panel
    img2img_panel = PANEL.replace("txt2img", "img2img")
    page.click("#txt2img_send_to_img2img")
    page.wait_for_function(
        f"() => document.querySelector('{img2img_panel}enable input[type=checkbox]').checked", timeout=30_000
    )
    assert page.locator(f"{img2img_panel}video_length input").input_value() == str(FRAMES)
    page.close()

    page = open_page(browser, ui_server)  # fresh defaults: disabled, frames 0
    enable = page.locator(f"{PANEL}enable input[type=checkbox]")
    assert not enable.is_checked()
    page.fill("#txt2img_prompt textarea", infotext)
    page.locator("#paste:visible").click()
    page.wait_for_function(
        f"() => document.querySelector('{PANEL}enable input[type=checkbox]').checked", timeout=30_000
    )
    page.click(f"{PANEL}accordion .label-wrap")
    page.screenshot(path=str(artifacts_dir / "realhost-browser-pasted.png"))
    assert enable.is_checked()
    assert page.locator(f"{PANEL}video_length input").input_value() == str(FRAMES)
    assert page.locator("#txt2img_prompt textarea").input_value() == "a photo of a cat"
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "3"
    page.close()
