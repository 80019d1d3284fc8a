"""The SVD request parser: API keys and aliases, the base a request starts from, and refusals
that name the field, the value and what is allowed."""

from __future__ import annotations

import pytest

from motion_module.params import ExportFormat, ParamsError
from motion_module.svd.params import SvdParams, parse_svd_params


def test_defaults_and_a_full_request() -> None:
    assert parse_svd_params({}) == SvdParams()
    params = parse_svd_params(
        {
            "model": "svd_xt.safetensors",
            "width": "512",
            "height": 320,
            "video_length": 25,
            "seed": 7,
            "motion_bucket": 40,
            "noise_aug_strength": "0.1",
            "min_guidance": 1.5,
            "max_guidance": 3,
            "format": "MP4, PNG",
            "decode_chunk": 8,
        }
    )
    assert (params.model, params.width, params.height, params.frames) == ("svd_xt.safetensors", 512, 320, 25)
    assert (params.seed, params.motion_bucket_id, params.noise_aug_strength) == (7, 40, 0.1)
    assert (params.min_guidance, params.max_guidance, params.decode_chunk) == (1.5, 3.0, 8)
    assert params.formats == (ExportFormat.MP4, ExportFormat.PNG)
    assert params.export_params().fps == params.fps == 7


def test_missing_keys_keep_the_base() -> None:
    base = SvdParams(width=512, height=320, steps=10, image="picture")
    params = parse_svd_params({"steps": 4}, base=base)
    assert (params.width, params.height, params.steps, params.image) == (512, 320, 4, "picture")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"width": 500}, "SVD: width = 500 is not allowed; expected a multiple of 8 from 64 to 2048"),
        ({"seed": -2}, "SVD: seed = -2 is not allowed; expected -1 (random) or a whole number"),
        ({"frames": 129}, "SVD: frames = 129 is not allowed; expected 0 (the model's own count) or 1 to 128"),
        ({"formats": "AVI"}, "SVD: formats = 'AVI' is not allowed; expected a list of GIF, MP4"),
        ({"sampler": "Euler"}, "SVD: unknown argument 'sampler'; allowed keys are model, image, width"),
        (
            {"min_guidance": 4, "max_guidance": 3},
            "SVD: min_guidance = 4.0 is above max_guidance = 3.0; expected min_guidance <= max_guidance",
        ),
    ],
)
def test_refusals_name_field_value_and_what_is_allowed(request_, message) -> None:
    with pytest.raises(ParamsError) as error:
        parse_svd_params(request_)
    assert str(error.value).startswith(message)
