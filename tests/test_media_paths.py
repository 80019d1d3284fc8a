"""Frame-folder listing (natural order, media only) and the path policy for request paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from motion_module.media_paths import check_readable_path, list_frame_files, natural_key


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_natural_order_matches_the_webui_listing(tmp_path) -> None:
    names = ["frame10.png", "frame2.png", "Frame1.PNG", "frame2b.jpg", "frame0010.webp", "frame9.tif"]
    touch(tmp_path, *names)
    listed = [os.path.basename(f) for f in list_frame_files(tmp_path)]
    # numbers compare by value (10 == 0010, then the suffix decides), letters without case
    assert listed == [
        "Frame1.PNG",
        "frame2.png",
        "frame2b.jpg",
        "frame9.tif",
        "frame10.png",
        "frame0010.webp",
    ]
    assert sorted(["a100", "a20", "a3"], key=natural_key) == ["a3", "a20", "a100"]


def test_listing_keeps_image_files_only(tmp_path) -> None:
    touch(tmp_path, "00000.png", "00001.jpeg", "00002.bmp", "00003.tiff", "notes.txt", ".hidden.png")
    touch(tmp_path / "sub.png", "00004.png")  # a folder named like an image is skipped
    listed = list_frame_files(str(tmp_path))
    assert listed == [
        os.path.join(str(tmp_path), n) for n in ("00000.png", "00001.jpeg", "00002.bmp", "00003.tiff")
    ]


@pytest.mark.parametrize("field", ["video_path", "mask_path"])
def test_empty_missing_or_file_folders_are_refused_by_field(tmp_path, field) -> None:
    touch(tmp_path / "empty", "readme.txt")
    with pytest.raises(ValueError, match=rf"^{field} '.*empty' holds no image files; allowed: \.png"):
        list_frame_files(tmp_path / "empty", field)
    with pytest.raises(ValueError, match=rf"^{field} '.*nowhere' does not exist"):
        list_frame_files(str(tmp_path / "nowhere"), field)
    touch(tmp_path, "one.png")
    with pytest.raises(ValueError, match=rf"^{field} '.*one.png' is a file; give a folder"):
        list_frame_files(str(tmp_path / "one.png"), field)


@pytest.fixture
def tree(tmp_path):
    """allowed/ (frames, a video, a text file, escaping links) and secret/ outside it."""
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    touch(allowed / "frames", "0.png", "1.png")
    touch(allowed, "clip.mp4", "notes.txt")
    touch(secret, "s.png", "passwd")
    (allowed / "link_dir").symlink_to(secret, target_is_directory=True)
    (allowed / "link.png").symlink_to(secret / "s.png")
    (allowed / "fake.png").symlink_to(secret / "passwd")
    return allowed, secret


def test_paths_inside_the_allowed_roots_are_accepted(tree) -> None:
    allowed, _ = tree
    roots = [str(allowed)]
    assert check_readable_path(str(allowed / "frames"), "video_path", roots) == (allowed / "frames").resolve()
    assert (
        check_readable_path(allowed / "clip.mp4", "video_source", roots) == (allowed / "clip.mp4").resolve()
    )
    assert check_readable_path(f"  {allowed}/frames/../clip.mp4 ", "video_source", roots).name == "clip.mp4"


@pytest.mark.parametrize(
    "relative",
    [
        "../secret",
        "../secret/s.png",
        "frames/../../secret/s.png",
        "link_dir",
        "link.png",
        "../secret/missing",
    ],
)
def test_paths_escaping_the_roots_are_refused(tree, relative) -> None:
    allowed, _ = tree
    value = f"{allowed}/{relative}"
    with pytest.raises(ValueError) as error:
        check_readable_path(value, "video_path", [str(allowed)])
    message = str(error.value)
    # names the field, the value as given and the allowed roots; never says whether it exists
    assert message.startswith(f"video_path {value!r} is outside the folders this WebUI may read from")
    assert repr(str(allowed)) in message and "exist" not in message


def test_without_roots_any_existing_media_path_is_accepted(tree) -> None:
    _, secret = tree
    assert check_readable_path(secret / "s.png", "video_source", None) == (secret / "s.png").resolve()
    with pytest.raises(ValueError, match="outside"):
        check_readable_path(secret / "s.png", "video_source", [])  # no roots: nothing is readable


def test_non_media_files_are_refused(tree) -> None:
    allowed, _ = tree
    with pytest.raises(
        ValueError, match=r"^video_source '.*notes.txt' is not a video or image file; allowed: "
    ):
        check_readable_path(allowed / "notes.txt", "video_source", [allowed])
    with pytest.raises(ValueError, match="is not a video or image file"):  # .png name, text file behind it
        check_readable_path(allowed / "fake.png", "video_source", None)
    with pytest.raises(ValueError, match=r"^mask_path is empty"):
        check_readable_path("  ", "mask_path", None)


def test_listing_refuses_a_frame_linking_outside_the_roots(tree) -> None:
    allowed, secret = tree
    (allowed / "frames" / "2.png").symlink_to(secret / "s.png")
    assert len(list_frame_files(allowed / "frames")) == 3  # no roots: the link is a frame
    with pytest.raises(ValueError, match=r"holds '2.png', which links outside the folders"):
        list_frame_files(allowed / "frames", "video_path", [allowed])
