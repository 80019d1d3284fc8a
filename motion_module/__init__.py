"""AnimateDiff engine: motion modules, window sampling, prompt travel, video export.

Pure PyTorch/NumPy/PIL; it imports nothing from the WebUI, so everything here runs and is tested
on a CPU without a WebUI checkout. The WebUI adapter lives in ``scripts/animatediff_webui``.
"""
