"""The WebUI adapter: the only code that reads or changes WebUI objects.

A subpackage (not auto-executed by the WebUI's script loader) with a name unique in the shared
``scripts.`` namespace. WebUI modules are imported inside functions, so every file here imports
without a WebUI and is tested with small fakes.
"""
