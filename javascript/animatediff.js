// AnimateDiff panel niceties (the API never depends on this file):
// - the accordion title shows "AnimateDiff: on" while Enable is ticked, so a closed panel does not
//   hide that the next Generate makes a video;
// - tooltips on the panel's labels repeat the short help written under each field;
// - an MP4 or WebM result (which a gallery cannot show) plays in a video player under the
//   gallery, looping, with a download link; GIF and WebP stay in the gallery. The SVD tab's
//   gallery gets the same player;
// - the SVD tab: Generate shows the WebUI's progress bar (animatediff_svd_submit), and the
//   "Send to SVD" buttons under the txt2img/img2img results open the tab
//   (switch_to_animatediff_svd, called by the WebUI's paste registry by that name).
// onUiUpdate runs from a MutationObserver over the whole page: everything here writes to the DOM
// only when a value really changes, or the write itself would trigger the observer again, forever.
(function () {
    const TABS = ["txt2img", "img2img"];
    const SVD = "animatediff_svd"; // the SVD tab's id: its elements' ids start with it

    function enableBox(tab) {
        return gradioApp().querySelector(`#script_${tab}_animatediff_enable input[type=checkbox]`);
    }

    function titleSpan(tab) {
        const accordion = gradioApp().getElementById(`script_${tab}_animatediff_accordion`);
        return accordion ? accordion.querySelector(".label-wrap span") : null;
    }

    function showState(tab) {
        const box = enableBox(tab);
        const span = titleSpan(tab);
        if (!box || !span) return;
        const text = box.checked ? "AnimateDiff: on" : "AnimateDiff";
        const weight = box.checked ? "bold" : "";
        if (span.textContent !== text) span.textContent = text;
        if (span.style.fontWeight !== weight) span.style.fontWeight = weight;
    }

    function addTooltips(tab) {
        const root = gradioApp().getElementById(`script_${tab}_animatediff_accordion`);
        if (!root) return;
        root.querySelectorAll("[id^=script_] .info, [id^=script_] [data-testid=block-info]").forEach((info) => {
            const label = info.closest("label") || info.parentElement;
            const text = info.textContent.trim();
            if (label && text && label.title !== text) label.title = text;
        });
    }

    const VIDEO = /\.(mp4|webm)(\?|$)/i;

    function galleryVideo(gallery) {
        const sources = Array.from(gallery.querySelectorAll("img")).map((img) => img.getAttribute("src") || "");
        const videos = sources.filter((src) => VIDEO.test(src));
        return videos.find((src) => /\.mp4(\?|$)/i.test(src)) || videos[0] || null;
    }

    function showVideo(tab) {
        const gallery = gradioApp().getElementById(`${tab}_gallery`);
        showVideoUnder(gallery, `animatediff_${tab}_video`);
    }

    function showVideoUnder(gallery, boxId) {
        if (!gallery) return;
        const url = galleryVideo(gallery);
        let box = gradioApp().getElementById(boxId);
        if (!url) {
            if (box && box.style.display !== "none") box.style.display = "none";
            return;
        }
        if (!box) {
            box = document.createElement("div");
            box.id = boxId;
            box.className = "animatediff-video";
            const video = document.createElement("video");
            Object.assign(video, {controls: true, loop: true, autoplay: true, muted: true, playsInline: true});
            Object.assign(video.style, {width: "100%", maxHeight: "70vh", background: "#000"});
            const link = document.createElement("a");
            link.textContent = "Download the video";
            link.setAttribute("download", "");
            box.append(video, link);
            gallery.parentElement.insertBefore(box, gallery.nextSibling);
        }
        const video = box.querySelector("video");
        const link = box.querySelector("a");
        if (video.getAttribute("src") !== url) {
            video.setAttribute("src", url);
            link.setAttribute("href", url);
        }
        if (box.style.display !== "") box.style.display = "";
        gallery.querySelectorAll("img").forEach((img) => {  // a gallery cannot draw a video file
            const item = img.closest("button") || img;
            if (VIDEO.test(img.getAttribute("src") || "") && item.style.display !== "none") item.style.display = "none";
        });
    }

    // Hooks each tab's checkbox once, as soon as it exists. showState also runs on every update
    // (a pasted infotext ticks Enable without a change event); it is a no-op unless the state
    // changed, so it cannot feed the observer.
    onUiUpdate(function () {
        for (const tab of TABS) {
            const box = enableBox(tab);
            if (!box) continue;
            if (!box.dataset.animatediffWatched) {
                box.dataset.animatediffWatched = "1";
                box.addEventListener("change", () => showState(tab));
                addTooltips(tab);
            }
            showState(tab);
            showVideo(tab);
        }
        showVideoUnder(gradioApp().getElementById(`${SVD}_gallery`), `${SVD}_video`);
    });

    window.switch_to_animatediff_svd = function() {
        const buttons = gradioApp().querySelectorAll("#tabs > .tab-nav > button");
        const button = Array.from(buttons).find((b) => b.textContent.trim() === "SVD");
        if (button) button.click();
        return Array.from(arguments);
    };

    // Generate in the SVD tab: a task id for the WebUI's progress bar over our gallery, as the
    // WebUI's own submit() does for txt2img; the id goes to the server as the first input.
    window.animatediff_svd_submit = function() {
        const id = randomId();
        const generate = gradioApp().getElementById(`${SVD}_generate`);
        if (generate) generate.disabled = true;
        requestProgress(id, gradioApp().getElementById(`${SVD}_gallery_container`),
            gradioApp().getElementById(`${SVD}_gallery`), function() {
                if (generate) generate.disabled = false;
            });
        const args = Array.from(arguments);
        args[0] = id;
        return args;
    };
})();
