"""Stable Video Diffusion (SVD, SVD-XT): one image in, a short video out.

A second video model beside the motion modules, sharing the exporter and the parameter
conventions. Pure PyTorch over the official single-file checkpoints (sgm key layout); imports
nothing from the WebUI.
"""
