"""Test-only WebUI extension of the real-host tier: a tiny OpenCLIP text tower for the tiny SDXL
checkpoint.

The SDXL config names its second text encoder by an OpenCLIP architecture name, and OpenCLIP
only knows the names of its registry. This registers ``tiny-realhost-openclip`` (the JSON beside
this folder) when the WebUI loads scripts, which is before it loads the checkpoint. Nothing in
the product knows about it.
"""

import os

import open_clip

open_clip.add_model_config(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tiny-realhost-openclip.json")
)
