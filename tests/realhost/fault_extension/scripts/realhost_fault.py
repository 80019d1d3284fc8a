"""Test-only WebUI extension of the real-host tier: raises inside the UNet mid-sampling on request.

The tier copies this folder into the test server's extensions dir. A job whose prompt contains
``FAULT_MARKER`` gets a one-shot forward pre-hook on the UNet at sampling step 1, which removes
itself and raises: an ordinary exception from deep inside sampling, as an out-of-memory error
would be, that no WebUI hook wrapper swallows. Nothing in the product knows about it.
"""

from modules import script_callbacks, shared

FAULT_MARKER = "realhost-inject-fault"
FAULT_STEP = 1


class InjectedFault(RuntimeError):
    pass


def _arm(params) -> None:
    p = getattr(params.denoiser, "p", None)
    if p is None or FAULT_MARKER not in str(getattr(p, "prompt", "")):
        return
    if params.sampling_step != FAULT_STEP or getattr(p, "_realhost_fault_armed", False):
        return
    p._realhost_fault_armed = True
    unet = shared.sd_model.model.diffusion_model
    handle = None

    def boom(module, args):
        handle.remove()
        print(f"realhost-fault: raising inside the UNet at sampling step {FAULT_STEP}", flush=True)
        raise InjectedFault(f"realhost: fault injected inside the UNet at sampling step {FAULT_STEP}")

    handle = unet.register_forward_pre_hook(boom)


script_callbacks.on_cfg_denoiser(_arm, name="realhost fault injector")
