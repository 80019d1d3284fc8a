"""Run by the WebUI at launch (unless --skip-install): install what the exporter needs, if missing.

Fast and idempotent: nothing is installed when everything is present. Uses the WebUI's own
helpers; never touches torch or anything the WebUI pins.
"""

import launch

# distribution name -> pip requirement
REQUIREMENTS = {
    "imageio": "imageio>=2.31",
    "imageio-ffmpeg": "imageio-ffmpeg>=0.4.9",
}

for distribution, requirement in REQUIREMENTS.items():
    if not launch.is_installed(distribution):
        launch.run_pip(f'install "{requirement}"', f"AnimateDiff requirement: {requirement}")
