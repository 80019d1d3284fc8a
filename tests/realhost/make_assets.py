"""Builds the WebUI-side test assets at test time: a tiny random-weight SD1.5 checkpoint (and,
for the ControlNet tests, a random ControlNet for its UNet: ``build_controlnet``); with
``--full-size`` a random SD1.5 checkpoint at the real sizes instead, for the speed benchmark.

Runs under the WebUI's own interpreter (``SD_WEBUI_PYTHON``) so the checkpoint is made from the
checkout's ldm classes and its ``configs/v1-inference.yaml``, scaled down (UNet and VAE 32
channels, a 2-layer 64-wide text encoder) so a 64×64 txt2img step takes milliseconds on CPU. The
CLIP tokenizer files are derived from the BPE vocabulary open-clip-torch ships: no hub access.

The full-size checkpoint keeps the config's real widths (UNet 320 channels, VAE 128, a CLIP
ViT-L/14 text encoder: 12 layers, 768 wide), random weights stored in fp16 (~2 GB; the server
computes in fp32 with --no-half). It takes a minute and 7 GB of RAM to build, so it is made once
into a cache folder (``full_size_cache``) and reused while its name (which carries
``FULL_SIZE_VERSION``) matches: never into the repository.

    python make_assets.py --webui /path/to/webui --out /tmp/dir [--second]   # prints the paths
    python make_assets.py --webui /path/to/webui --full-size [--out /cache/dir]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys

TEXT_WIDTH = 64  # text-encoder hidden size = UNet context_dim
FULL_TEXT_WIDTH = 768  # CLIP ViT-L/14's text tower, SD1.5's context_dim
FULL_SIZE_NAME = "random-sd15-full"
FULL_SIZE_VERSION = 1  # bump when the full-size build changes: cached files of other versions are rebuilt


def byte_alphabet() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE alphabet in vocabulary order: printable bytes first (as
    themselves), then the other bytes as code points from 256 up, so every byte has a visible,
    whitespace-free symbol."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def write_tokenizer(out_dir: str) -> None:
    """vocab.json + merges.txt for CLIP ViT-L/14 (49408 tokens), from open_clip's BPE file."""
    import open_clip

    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(bpe, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # first line is a header; CLIP keeps 48894 merges
    symbols = list(byte_alphabet().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump({t: i for i, t in enumerate(tokens)}, fh, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def write_text_config(out_dir: str, full_size: bool = False) -> None:
    """The text encoder's config: 2 layers 64 wide, or CLIP ViT-L/14's 12 layers 768 wide."""
    from transformers import CLIPTextConfig

    width = FULL_TEXT_WIDTH if full_size else TEXT_WIDTH
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=12 if full_size else 2,
        num_attention_heads=12 if full_size else 4,
        max_position_embeddings=77,
        projection_dim=width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    config.save_pretrained(out_dir)


def scaled_config(webui: str, text_dir: str, full_size: bool = False):
    """The checkout's v1-inference.yaml with every width divided by ten (GroupNorm needs 32), or
    as it is (``full_size``); the text encoder read from ``text_dir`` either way."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(webui, "configs", "v1-inference.yaml"))
    cfg.model.params.cond_stage_config.params = {"version": text_dir}
    if full_size:
        return cfg
    unet = cfg.model.params.unet_config.params
    unet.model_channels = 32
    unet.context_dim = TEXT_WIDTH
    unet.use_checkpoint = False
    vae = cfg.model.params.first_stage_config.params.ddconfig
    vae.ch = 32  # four levels stay: the latent factor must stay 8
    vae.num_res_blocks = 1
    return cfg


def randomize(module, seed: int) -> None:
    """Fill zero-initialised layers (ldm's output convs) with small random values: a UNet that
    predicts zeros would hide whether a motion module changes anything."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5 / math.sqrt(p[0].numel()))


def build_checkpoint(
    webui: str, out_dir: str, name: str = "tiny-random-sd15", seed: int = 0, full_size: bool = False
) -> str:
    """The checkpoint (UNet, VAE, text encoder under ldm's keys) and its yaml in
    ``out_dir/Stable-diffusion``; fp32 on disk, fp16 when ``full_size`` (half the size)."""
    sys.path.insert(0, os.path.join(webui, "repositories", "stable-diffusion-stability-ai"))
    import torch
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    text_dir = os.path.join(out_dir, "clip-full" if full_size else "clip-tiny")
    write_tokenizer(text_dir)
    write_text_config(text_dir, full_size)
    cfg = scaled_config(webui, text_dir, full_size)
    stored = torch.float16 if full_size else torch.float32

    torch.manual_seed(seed)
    unet = instantiate_from_config(cfg.model.params.unet_config)
    vae = instantiate_from_config(cfg.model.params.first_stage_config)
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(text_dir))
    randomize(unet, seed + 1)
    randomize(vae, seed + 2)
    state = {}
    for prefix, module in (
        ("model.diffusion_model.", unet),
        ("first_stage_model.", vae),
        ("cond_stage_model.transformer.", text),
    ):
        state.update({prefix + k: v.detach().to(stored).contiguous() for k, v in module.state_dict().items()})
    del unet, vae, text

    ckpt_dir = os.path.join(out_dir, "Stable-diffusion")
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, name + ".safetensors")
    OmegaConf.save(cfg, os.path.join(ckpt_dir, name + ".yaml"))
    partial = path + ".partial"  # renamed when complete: an interrupted build is never taken as done
    save_file(state, partial)
    os.replace(partial, path)
    return path


def full_size_cache() -> str:
    """Where the full-size checkpoint is kept between runs: ``$ANIMATEDIFF_REALHOST_CACHE`` or a
    folder in the system temp dir (outside any checkout)."""
    import tempfile

    default = os.path.join(tempfile.gettempdir(), "animatediff-realhost-cache")
    return os.environ.get("ANIMATEDIFF_REALHOST_CACHE") or default


def full_size_checkpoint(webui: str, cache_dir: str) -> str:
    """The cached full-size random SD1.5 checkpoint, built first if this version is missing."""
    name = f"{FULL_SIZE_NAME}-v{FULL_SIZE_VERSION}"
    path = os.path.join(cache_dir, "Stable-diffusion", name + ".safetensors")
    if os.path.isfile(path) and os.path.isfile(os.path.join(cache_dir, "clip-full", "config.json")):
        return path
    return build_checkpoint(webui, cache_dir, name, seed=0, full_size=True)


OPENCLIP_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "tiny_openclip_extension", "tiny-realhost-openclip.json"
)
OPENCLIP_ARCH = "tiny-realhost-openclip"  # registered in the server by tiny_openclip_extension
TIME_EMBED = 32  # per size/crop number of the SDXL vector conditioning (the real one: 256)


def sdxl_config(webui: str, text_dir: str):
    """The SDXL base config of the checkout's generative-models, scaled down: UNet 32 channels with
    transformer depth 1, context 64 + 64 (a 2-layer CLIP and a 2-layer OpenCLIP tower, both 64
    wide), vector conditioning 64 pooled + 6 × 32, VAE 32 channels (four levels: factor 8)."""
    from omegaconf import OmegaConf

    repo = os.path.join(webui, "repositories", "generative-models")
    cfg = OmegaConf.load(os.path.join(repo, "configs", "inference", "sd_xl_base.yaml"))
    unet = cfg.model.params.network_config.params
    unet.model_channels = 32
    unet.num_head_channels = 16
    unet.transformer_depth = [1, 1, 1]
    unet.context_dim = 2 * TEXT_WIDTH
    unet.adm_in_channels = TEXT_WIDTH + 6 * TIME_EMBED
    unet.use_checkpoint = False
    clip, openclip, *sizes = cfg.model.params.conditioner_config.params.emb_models
    clip.params = {"version": text_dir, "layer": "hidden", "layer_idx": 1}  # penultimate of 2 layers
    openclip.params.arch = OPENCLIP_ARCH
    openclip.params.version = None
    for size in sizes:
        size.params.outdim = TIME_EMBED
    vae = cfg.model.params.first_stage_config.params.ddconfig
    vae.ch = 32
    vae.num_res_blocks = 1
    vae.attn_type = "vanilla"
    return cfg


def build_sdxl_checkpoint(webui: str, out_dir: str, name: str = "tiny-random-sdxl", seed: int = 0) -> str:
    """A random SDXL checkpoint in the sgm layout (model.diffusion_model., conditioner.embedders.0/1.,
    first_stage_model.) built from the scaled config by sgm itself, with its yaml beside it."""
    sys.path.insert(0, os.path.join(webui, "repositories", "generative-models"))
    import open_clip
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    from sgm.util import instantiate_from_config
    from transformers import CLIPTextConfig, CLIPTextModel

    open_clip.add_model_config(OPENCLIP_CONFIG)
    text_dir = os.path.join(out_dir, "clip-tiny-xl")
    write_tokenizer(text_dir)
    write_text_config(text_dir)
    torch.manual_seed(seed)
    CLIPTextModel(CLIPTextConfig.from_pretrained(text_dir)).save_pretrained(text_dir)  # sgm reads weights
    cfg = sdxl_config(webui, text_dir)
    model = instantiate_from_config(cfg.model)
    randomize(model.model, seed + 1)
    randomize(model.first_stage_model, seed + 2)
    gen = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():  # LayerNorms at exactly 1/0 would give the emphasis code 0/0 (NaN)
        for module in model.conditioner.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=gen))
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    ckpt_dir = os.path.join(out_dir, "Stable-diffusion")
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, name + ".safetensors")
    save_file(state, path)
    OmegaConf.save(cfg, os.path.join(ckpt_dir, name + ".yaml"))
    return path


def controlnet_encoder(ckpt_path: str, seed: int):
    """The parts every ldm ``cldm`` ControlNet for the UNet of ``ckpt_path`` shares: its encoder
    (time embedding, input and middle blocks) copied from that UNet, as a ControlNet is when
    training starts. Returns the state (unprefixed keys), the UNet's width,
    ``conv(name, c_in, c_out, k, gain)`` that adds a random conv to the state, and
    ``zero_convs(gain)`` that adds the zero convolutions with random values (at their usual
    zeros the control would not reach the frames), both from one seeded generator. Reads only
    the UNet's encoder tensors from the file."""
    import torch
    from safetensors import safe_open

    unet_prefix = "model.diffusion_model."
    encoder = ("time_embed.", "input_blocks.", "middle_block.")
    with safe_open(ckpt_path, "pt") as fh:
        unet = {
            k[len(unet_prefix) :]: fh.get_tensor(k)
            for k in fh.keys()
            if k.startswith(unet_prefix) and k[len(unet_prefix) :].startswith(encoder)
        }
    state = dict(unet)
    width = int(unet["input_blocks.0.0.weight"].shape[0])
    gen = torch.Generator().manual_seed(seed)

    def conv(name: str, c_in: int, c_out: int, k: int, gain: float) -> None:
        fan_in = c_in * k * k
        state[name + ".weight"] = torch.randn(c_out, c_in, k, k, generator=gen) * gain / math.sqrt(fan_in)
        state[name + ".bias"] = torch.randn(c_out, generator=gen) * 0.1

    def out_channels(block: int) -> int:
        for key in (f"input_blocks.{block}.0.out_layers.3.weight", f"input_blocks.{block}.0.op.weight"):
            if key in unet:
                return int(unet[key].shape[0])
        return int(unet[f"input_blocks.{block}.0.weight"].shape[0])

    def zero_convs(gain: float) -> None:
        blocks = sorted({int(k.split(".")[1]) for k in unet if k.startswith("input_blocks.")})
        for block in blocks:
            ch = out_channels(block)
            conv(f"zero_convs.{block}.0", ch, ch, 1, gain)
        mid = int(unet["middle_block.2.out_layers.3.weight"].shape[0])
        conv("middle_block_out.0", mid, mid, 1, gain)

    return state, width, conv, zero_convs


def build_controlnet(
    ckpt_path: str, out_path: str, seed: int = 3, hint_gain: float = 2.0, zero_gain: float = 1.0
) -> str:
    """A random ControlNet (ldm ``cldm`` layout, keys prefixed ``control_model.``) matching the
    UNet of ``ckpt_path`` (``controlnet_encoder``), with a random hint block large enough that
    the control reaches the frames. The hint block's last conv sets the width
    (sd-webui-controlnet reads it through the tier's probe extension). Needs only torch and
    safetensors."""
    from safetensors.torch import save_file

    state, width, conv, zero_convs = controlnet_encoder(ckpt_path, seed)
    hint = [3, 16, 16, 32, 32, 96, 96, 256, width]  # cldm's input_hint_block: 8 convs, SiLU between
    for i in range(8):
        conv(f"input_hint_block.{2 * i}", hint[i], hint[i + 1], 3, hint_gain)
    zero_convs(zero_gain)
    save_file({"control_model." + k: v.float().contiguous() for k, v in state.items()}, out_path)
    return out_path


def build_sparsectrl_rgb(
    ckpt_path: str, out_path: str, motion: dict, seed: int = 4, hint_gain: float = 2.0, zero_gain: float = 1.0
) -> str:
    """A random SparseCtrl RGB model as sd-webui-controlnet loads it (strictly, at SD1.5's full
    widths): the unprefixed ldm ControlNet keys of ``controlnet_encoder`` for the UNet of
    ``ckpt_path``, the RGB condition embedding ``input_hint_block.0`` (one 3×3 conv from the
    VAE latent plus the keyframe mask, 5 channels, to the UNet's width; a scribble model has a
    conv stack instead) and ``motion``, the v3 motion-module keys of the down blocks
    (``down_blocks.{i}.motion_modules.{j}…``). Stored in fp16, as the checkpoint is."""
    import torch
    from safetensors.torch import save_file

    state, width, conv, zero_convs = controlnet_encoder(ckpt_path, seed)
    conv("input_hint_block.0", 5, width, 3, hint_gain)
    zero_convs(zero_gain)
    state.update(motion)
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, out_path)
    return out_path


def ip_adapter_attention_keys() -> list[str]:
    """The SD1.5 UNet's cross-attention layers in the order sd-webui-controlnet numbers an
    IP-Adapter's ``ip_adapter.{2n+1}.to_k_ip`` / ``to_v_ip`` pairs: input blocks 1, 2, 4, 5, 7, 8,
    output blocks 3 to 11, then the middle block (the official ip-adapter_sd15 order)."""
    blocks = [f"input_blocks.{i}.1" for i in (1, 2, 4, 5, 7, 8)]
    blocks += [f"output_blocks.{i}.1" for i in range(3, 12)] + ["middle_block.1"]
    return [f"{block}.transformer_blocks.0.attn2" for block in blocks]


def build_ip_adapter(
    ckpt_path: str, out_path: str, clip_dim: int, tokens: int = 4, seed: int = 5, gain: float = 2.0
) -> str:
    """A random IP-Adapter in the ``ip-adapter_sd15`` layout (``image_proj.proj`` /
    ``image_proj.norm``, ``ip_adapter.{2n+1}.to_k_ip|to_v_ip.weight``) for the UNet of
    ``ckpt_path``. sd-webui-controlnet sizes it from the file: the cross-attention width from
    ``ip_adapter.1.to_k_ip.weight``, the CLIP embedding width (``clip_dim``) from
    ``image_proj.proj.weight``'s columns, the token count from its rows over that width; each
    ``to_k_ip``/``to_v_ip`` has the shape of its layer's ``attn2.to_k``. ``gain`` makes the image
    tokens reach the frames. Needs only torch and safetensors."""
    import torch
    from safetensors.torch import load_file, save_file

    unet = load_file(ckpt_path)
    prefix = "model.diffusion_model."
    context = int(unet[prefix + ip_adapter_attention_keys()[0] + ".to_k.weight"].shape[1])
    gen = torch.Generator().manual_seed(seed)

    def linear(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=gen) * gain / math.sqrt(cols)

    state = {
        "image_proj.proj.weight": linear(tokens * context, clip_dim),
        "image_proj.proj.bias": torch.randn(tokens * context, generator=gen) * 0.1,
        "image_proj.norm.weight": 1 + 0.1 * torch.randn(context, generator=gen),
        "image_proj.norm.bias": 0.1 * torch.randn(context, generator=gen),
    }
    for n, layer in enumerate(ip_adapter_attention_keys()):
        inner = int(unet[prefix + layer + ".to_k.weight"].shape[0])
        for name in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * n + 1}.{name}.weight"] = linear(inner, context)
    save_file({k: v.float().contiguous() for k, v in state.items()}, out_path)
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webui", required=True)
    parser.add_argument("--out", help="output folder (default with --full-size: the cache folder)")
    parser.add_argument("--second", action="store_true", help="also a second checkpoint (other weights)")
    parser.add_argument("--sdxl", action="store_true", help="a tiny SDXL checkpoint instead")
    parser.add_argument(
        "--full-size", action="store_true", help="the full-size SD1.5 checkpoint instead (built once, cached)"
    )
    args = parser.parse_args()
    if args.full_size:
        print(full_size_checkpoint(args.webui, args.out or full_size_cache()))
        return
    if not args.out:
        parser.error("--out is required (except with --full-size)")
    if args.sdxl:
        print(build_sdxl_checkpoint(args.webui, args.out))
        return
    print(build_checkpoint(args.webui, args.out))
    if args.second:
        print(build_checkpoint(args.webui, args.out, "tiny-random-sd15-b", seed=100))


if __name__ == "__main__":
    main()
