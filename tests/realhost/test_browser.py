"""Real host, browser: a person's path through the WebUI page in headless Chromium.

Opens the txt2img tab, opens the AnimateDiff accordion, ticks Enable, sets 8 frames, clicks
Generate and expects an animated GIF in the gallery; then pastes that result's infotext into a
fresh page and expects the panel restored and enabled. And the img2img Batch tab as one video: a
folder of 8 frames in, one 8-frame GIF in the gallery, AnimateDiff's files in the Output directory,
once without ControlNet (our wrapper of the tab's loop) and once with it (ControlNet's hijack of
the loop calls ``scripts.animatediff_i2ibatch``). And an MP4 result plays in the video player
under the gallery. And the SVD tab: a result sent to it, its Generate. Screenshots go to
artifacts/.
Needs Debian's ``chromium`` and the ``playwright`` package (its own browser downloads are never
used: ``executable_path`` points at the system Chromium).
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from realhost_server import PLAIN, decode_image

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


# --- img2img Batch tab as one video ------------------------------------------------------------------

BATCH_FRAMES = 8
I2I_PANEL = PANEL.replace("txt2img", "img2img")


def square_frame(i: int, size: int = 64) -> Image.Image:
    """Frame ``i`` of the input folder: a white 16-pixel square on black, 4 pixels further right each frame."""
    image = Image.new("RGB", (size, size))
    image.paste((255, 255, 255), (4 + 4 * i, 24, 20 + 4 * i, 40))
    return image


def files_under(folder: Path) -> set[str]:
    return (
        {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()
    )


@pytest.fixture(params=["plain", "controlnet"])
def batch_server(request):
    """plain: no ControlNet, our wrapper of ``modules.img2img.process_batch`` takes the Batch tab;
    controlnet: sd-webui-controlnet's hijack of it calls ``scripts.animatediff_i2ibatch``."""
    return request.param, request.getfixturevalue("ui_server" if request.param == "plain" else "cn_ui_server")


def test_img2img_batch_tab_makes_one_video(browser, batch_server, artifacts_dir):
    """img2img → Batch → From directory, a folder of 8 PNG frames, AnimateDiff on with Number of
    frames 0 and Context batch size 8: one generation whose gallery shows one 8-frame GIF.

    What lands in the Output directory (as it happens, asserted): only AnimateDiff's folder,
    ``<output>/AnimateDiff/<date>/<seq>-<seed>.gif`` and ``<seq>-<seed>/00000.png``…``00007.png``
    (the default formats GIF + PNG; PNG frames are ours with *Save PNG frames into the
    AnimateDiff folder*, the default). The WebUI itself writes nothing: no per-image files named
    after the inputs (its Batch loop never runs) and nothing in its own outputs/ folder."""
    kind, server = batch_server
    if kind == "controlnet":
        assert "ControlNet v1.1." in server.log_since(0), (
            "sd-webui-controlnet did not load:\n" + server.log_tail()
        )
    media = server.data_dir / f"media-batch-{kind}"
    source, output = media / "frames", media / "out"
    source.mkdir(parents=True)
    for i in range(BATCH_FRAMES):
        square_frame(i).save(source / f"frame{i}.png")
    webui_outputs = server.data_dir / "outputs"
    before = files_under(webui_outputs)
    offset = server.log_size()

    page = open_page(browser, server)
    page.click("#tabs > .tab-nav > button:has-text('img2img')")
    page.wait_for_selector("#img2img_prompt textarea", state="visible")
    page.fill("#img2img_prompt textarea", "a photo of a cat")
    page.click("#mode_img2img > .tab-nav > button:has-text('Batch')")
    page.click("#img2img_batch_source > .tab-nav > button:has-text('From directory')")
    page.fill("#img2img_batch_input_dir textarea", str(source))
    page.fill("#img2img_batch_output_dir textarea", str(output))
    for field, value in (("width", "64"), ("height", "64"), ("steps", "3")):
        set_number(page, f"#img2img_{field} input[type=number]", value)
    page.fill("#img2img_seed input", "99")

    page.click(f"{I2I_PANEL}accordion .label-wrap")
    page.locator(f"{I2I_PANEL}enable input[type=checkbox]").check()
    set_number(page, f"{I2I_PANEL}video_length input", "0")
    set_number(page, f"{I2I_PANEL}batch_size input[type=number]", str(BATCH_FRAMES))
    page.click("#img2img_generate")

    gallery = page.wait_for_selector("#img2img_gallery img[src*='.gif']", timeout=GENERATE_TIMEOUT_MS)
    page.wait_for_selector("#img2img_interrupt", state="hidden", timeout=30_000)
    page.screenshot(path=str(artifacts_dir / f"realhost-browser-batch-{kind}.png"))
    log = server.log_since(offset)
    shown = page.locator("#img2img_gallery img").evaluate_all("(imgs) => imgs.map(i => i.src)")
    src = gallery.get_attribute("src")
    data = page.request.get(src if src.startswith("http") else f"{server.url}/{src.lstrip('/')}").body()
    (artifacts_dir / f"realhost-browser-batch-{kind}.gif").write_bytes(data)
    infotext = page.locator("#html_info_img2img").last.inner_text()
    page.close()

    gif = Image.open(io.BytesIO(data))
    assert gif.format == "GIF" and gif.n_frames == BATCH_FRAMES and gif.size == (64, 64), (
        f"{kind}: gallery shows {gif.format} {gif.size} with {gif.n_frames} frames\n{log[-3000:]}"
    )
    assert len({s.split("?")[0] for s in shown}) == 1, (
        f"{kind}: the gallery shows more than the video: {shown}"
    )
    assert f"img2img Batch tab as one video of {BATCH_FRAMES} frames" in log, log[-3000:]
    assert f"{BATCH_FRAMES} init images (one per frame)" in log, log[-3000:]
    assert "Will process" not in log, f"{kind}: the WebUI's own Batch loop ran:\n{log[-3000:]}"
    assert "video_length: 8" in infotext and "batch_size: 8" in infotext, infotext

    written = files_under(output)
    videos = [name for name in written if name.endswith(".gif")]
    assert len(videos) == 1 and videos[0].startswith("AnimateDiff/") and videos[0].endswith("-99.gif"), (
        written
    )
    stem = videos[0][: -len(".gif")]
    frames = {f"{stem}/{i:05d}.png" for i in range(BATCH_FRAMES)}
    assert written == {videos[0], *frames}, f"{kind}: output directory holds {sorted(written)}"
    assert Image.open(output / videos[0]).n_frames == BATCH_FRAMES
    assert files_under(webui_outputs) == before, (
        f"{kind}: the WebUI wrote to its own outputs/: {sorted(files_under(webui_outputs) - before)}"
    )


# --- img2img Batch tab with one inpaint mask per frame --------------------------------------------

MASKED_FRAMES = 4


def textured_frame(k: int, size: int = 64) -> Image.Image:
    """Frame ``k``: seeded random colours, so every pixel of every frame is its own."""
    rng = np.random.default_rng(100 + k)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def half_mask(k: int, size: int = 64) -> Image.Image:
    """White (inpaint) on the left half for even frames, on the right half for odd ones."""
    array = np.zeros((size, size), np.uint8)
    array[:, : size // 2] = 255
    return Image.fromarray(array if k % 2 == 0 else array[:, ::-1].copy())


def generate_batch(page, output: Path, done, timeout_s: float = GENERATE_TIMEOUT_MS / 1000) -> None:
    """Set the Output directory, press Generate and wait until ``done()`` (polled) and the page
    has finished the job (Interrupt hidden)."""
    page.fill("#img2img_batch_output_dir textarea", str(output))
    page.click("#img2img_generate")
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"the Batch job into {output} never finished"
        page.wait_for_timeout(500)
    page.wait_for_selector("#img2img_interrupt", state="hidden", timeout=30_000)


def img2img_tab(page, name: str) -> None:
    page.locator("#mode_img2img > .tab-nav > button", has_text=re.compile(rf"^\s*{name}\s*$")).click()


def assert_pasted_back(kind: str, who: str, out: Image.Image, k: int) -> float:
    """Frame ``k``'s output keeps the input's pixels exactly outside mask ``k`` (the WebUI's
    paste-back) and differs inside it; returns the mean difference inside."""
    got = np.asarray(out.convert("RGB"), np.int16)
    source = np.asarray(textured_frame(k), np.int16)
    inpaint = np.asarray(half_mask(k)) == 255
    kept = np.abs(got - source)[~inpaint]
    assert kept.max() == 0, (
        f"{kind}, {who}, frame {k}: outside its mask the output is not the input "
        f"({np.count_nonzero(kept.max(axis=-1))} pixels differ, max |Δ| {kept.max()})"
    )
    inside = float(np.abs(got - source)[inpaint].mean())
    assert inside > 8, f"{kind}, {who}, frame {k}: inside its mask the output is the input (|Δ| {inside:.2f})"
    return inside


def test_img2img_batch_tab_inpaints_each_frame_with_its_mask(browser, batch_server, artifacts_dir):
    """img2img → Batch with an Inpaint batch mask directory of 4 masks for 4 frames (left and
    right halves alternating), Mask blur 0. First AnimateDiff off: the WebUI's own loop inpaints
    each image with its mask (matched by file name) and pastes the rest back. Then AnimateDiff
    on, one 4-frame video: every frame keeps its input's pixels exactly where the WebUI's own
    run does (outside its own mask) and is generated inside it. Then "Only masked" with the
    per-frame masks is refused naming the option, and a plain txt2img after it is
    pixel-identical to one before it."""
    kind, server = batch_server
    media = server.data_dir / f"media-inpaint-{kind}"
    source, masks = media / "frames", media / "masks"
    source.mkdir(parents=True)
    masks.mkdir()
    for k in range(MASKED_FRAMES):
        textured_frame(k).save(source / f"frame{k}.png")
        half_mask(k).save(masks / f"frame{k}.png")  # the WebUI pairs masks by file name

    page = open_page(browser, server)
    page.click("#tabs > .tab-nav > button:has-text('img2img')")
    page.wait_for_selector("#img2img_prompt textarea", state="visible")
    page.fill("#img2img_prompt textarea", "a photo of a cat")
    img2img_tab(page, "Inpaint")  # the inpaint options are shown there and apply to Batch too
    set_number(page, "#img2img_mask_blur input[type=number]", "0")
    img2img_tab(page, "Batch")
    page.click("#img2img_batch_source > .tab-nav > button:has-text('From directory')")
    page.fill("#img2img_batch_input_dir textarea", str(source))
    page.fill("#img2img_batch_inpaint_mask_dir textarea", str(masks))
    for field, value in (("width", "64"), ("height", "64"), ("steps", "3")):
        set_number(page, f"#img2img_{field} input[type=number]", value)
    page.fill("#img2img_seed input", "99")

    own_dir = media / "own"  # AnimateDiff off: the WebUI's loop, one image at a time
    generate_batch(page, own_dir, lambda: len(files_under(own_dir)) == MASKED_FRAMES)
    own = {re.search(r"frame\d+", name).group(): name for name in files_under(own_dir)}  # 00000-frame0.png
    assert sorted(own) == [f"frame{k}" for k in range(MASKED_FRAMES)], f"{kind}: WebUI wrote {own}"
    for k in range(MASKED_FRAMES):
        assert_pasted_back(kind, "the WebUI's own Batch loop", Image.open(own_dir / own[f"frame{k}"]), k)

    page.click(f"{I2I_PANEL}accordion .label-wrap")
    page.locator(f"{I2I_PANEL}enable input[type=checkbox]").check()
    set_number(page, f"{I2I_PANEL}video_length input", "0")
    set_number(page, f"{I2I_PANEL}batch_size input[type=number]", str(MASKED_FRAMES))
    offset = server.log_size()
    video_dir = media / "video"
    generate_batch(page, video_dir, lambda: any(name.endswith(".gif") for name in files_under(video_dir)))
    page.screenshot(path=str(artifacts_dir / f"realhost-browser-inpaint-{kind}.png"))
    log = server.log_since(offset)
    assert f"{MASKED_FRAMES} inpaint masks, one per frame" in log, log[-3000:]
    pngs = sorted((media / "video").rglob("0000*.png"))
    assert [p.name for p in pngs] == [f"{k:05d}.png" for k in range(MASKED_FRAMES)], (
        f"{kind}: video frames written: {pngs}\n{log[-3000:]}"
    )
    inside = [
        assert_pasted_back(kind, "the AnimateDiff video", Image.open(png), k) for k, png in enumerate(pngs)
    ]
    print(f"{kind}: mean |Δ| inside each frame's mask {[round(d, 1) for d in inside]}")

    before = plain_images(server)
    img2img_tab(page, "Inpaint")
    page.locator("#img2img_inpaint_full_res label", has_text="Only masked").click()
    img2img_tab(page, "Batch")
    refused = page.locator("#html_log_img2img .error", has_text="inpaint_full_res")
    generate_batch(page, media / "refused", lambda: refused.count() > 0)
    message = refused.first.inner_text()
    page.close()
    assert f"holds {MASKED_FRAMES} masks" in message and "Only masked" in message, message
    assert not (media / "refused").exists(), f"{kind}: the refused job wrote {files_under(media / 'refused')}"
    after = plain_images(server)
    for i, (a, b) in enumerate(zip(after, before, strict=True)):
        assert np.array_equal(a, b), (
            f"{kind}: plain txt2img image {i} after the refused job differs from before"
        )


def plain_images(server) -> list[np.ndarray]:
    body = server.generate("/sdapi/v1/txt2img", PLAIN)
    return [np.asarray(decode_image(b).convert("RGB")) for b in body["images"]]


VIDEO_FRAMES, VIDEO_FPS = 8, 4


def test_mp4_plays_under_the_gallery(browser, ui_server, artifacts_dir):
    """Generate with MP4 and GIF: a <video> under the gallery gets the MP4 (a gallery cannot show
    one), loads, loops, lasts frames / FPS, and links it for download; the GIF stays in the gallery."""
    page = open_page(browser, ui_server)
    page.fill("#txt2img_prompt textarea", "a photo of a cat")
    for field, value in (("width", "64"), ("height", "64"), ("steps", "2")):
        set_number(page, f"#txt2img_{field} input[type=number]", value)
    page.click(f"{PANEL}accordion .label-wrap")
    page.locator(f"{PANEL}enable input[type=checkbox]").check()
    set_number(page, f"{PANEL}video_length input", str(VIDEO_FRAMES))
    set_number(page, f"{PANEL}fps input", str(VIDEO_FPS))
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
    assert state["loop"] and abs(state["duration"] - VIDEO_FRAMES / VIDEO_FPS) < 0.2, state
    link = page.locator("#animatediff_txt2img_video a")
    assert link.get_attribute("href") == video.get_attribute("src")
    assert page.locator("#txt2img_gallery img[src*='.gif']").count() >= 1  # the GIF stays in the gallery
    page.close()


# --- the SVD tab -------------------------------------------------------------------------------------

SVD = "#animatediff_svd_"  # the SVD tab's element ids


def svd_engine_ready(folder: Path) -> bool:
    """Tiny random SVD checkpoints in ``folder`` if the engine's test factory is in the checkout."""
    from test_svd import write_checkpoints

    return write_checkpoints(folder)


def test_svd_tab_opens_takes_a_sent_image_and_generates(browser, ui_server, artifacts_dir):
    """A txt2img result goes to the SVD tab with its "Send to SVD" button (the tab opens, the
    image arrives); the tab shows its image input and Generate. With the engine's tiny checkpoints
    in <data dir>/models/svd (listed after the refresh button), Generate gives a 4-frame GIF in the
    gallery, the MP4 in the player under it, and the memory plan and infotext beside them."""
    page = open_page(browser, ui_server)
    page.fill("#txt2img_prompt textarea", "a photo of a cat")
    for field, value in (("width", "64"), ("height", "64"), ("steps", "2")):
        set_number(page, f"#txt2img_{field} input[type=number]", value)
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_gallery img", timeout=GENERATE_TIMEOUT_MS)
    page.wait_for_selector("#txt2img_interrupt", state="hidden", timeout=30_000)

    page.click("#txt2img_send_to_animatediff_svd")
    page.wait_for_selector(f"{SVD}image img", state="visible", timeout=30_000)  # the tab opened with it
    assert page.locator(f"{SVD}generate").is_visible()
    page.screenshot(path=str(artifacts_dir / "realhost-browser-svd-tab.png"))

    if not svd_engine_ready(ui_server.data_dir / "models" / "svd"):
        page.close()
        pytest.skip(
            "the SVD engine's test factory (tests/svd_factory.py) is not in this checkout: tab checked only"
        )
    page.click(f"{SVD}refresh")
    model = page.locator(f"{SVD}model input")
    page.wait_for_function(
        f"() => document.querySelector('{SVD}model input').value.endsWith('.safetensors')", timeout=30_000
    )
    assert model.input_value() == "svd.safetensors"
    for field, value in (("width", "64"), ("height", "64"), ("steps", "2")):
        set_number(page, f"{SVD}{field} input[type=number]", value)
    set_number(page, f"{SVD}frames input", "4")
    page.locator(f"{SVD}formats label", has_text="MP4").locator("input").check()
    page.click(f"{SVD}generate")

    gallery_gif = page.wait_for_selector(f"{SVD}gallery img[src*='.gif']", timeout=GENERATE_TIMEOUT_MS)
    page.wait_for_selector("#animatediff_svd_video video[src*='.mp4']", timeout=30_000)
    page.screenshot(path=str(artifacts_dir / "realhost-browser-svd-generated.png"))
    src = gallery_gif.get_attribute("src")
    data = page.request.get(src if src.startswith("http") else f"{ui_server.url}/{src.lstrip('/')}").body()
    info = page.locator(f"{SVD}info").last.inner_text()
    page.close()
    gif = Image.open(io.BytesIO(data))
    assert gif.format == "GIF" and gif.n_frames == 4 and gif.size == (64, 64), (gif.format, gif.n_frames)
    assert "Memory plan:" in info and 'SVD: "model: svd.safetensors, frames: 4' in info, info
