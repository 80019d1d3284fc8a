"""The trusted twins of the SVD engine's networks, holding the same weights, for the SVD tests.

- the UNet: diffusers' ``UNetSpatioTemporalConditionModel`` (``diffusers_unet``);
- the conditioning encoder and temporal decoder: diffusers' ``AutoencoderKLTemporalDecoder``
  (``diffusers_vae``);
- the image encoder: transformers' ``CLIPVisionModelWithProjection`` (``transformers_image_encoder``);
- the sampler: diffusers' ``EulerDiscreteScheduler`` in the configuration the official SVD
  repositories ship (``diffusers_scheduler``);
- a whole job: diffusers' ``StableVideoDiffusionPipeline`` made of the four (``diffusers_pipeline``).

Each builder shapes the peer from our module's config and loads our weights through an explicit
key mapping, checking that every peer key is filled exactly once. diffusers and transformers are
imported inside the builders, so a test module decides itself whether to skip without them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from motion_module.svd.image_encoder import ImageEncoder
from motion_module.svd.unet import SvdUNet, SvdUNetConfig
from motion_module.svd.vae import TemporalDecoder, VaeEncoder

# --- UNet: sgm keys -> diffusers keys ----------------------------------------------------------

UNET_RESNET_RENAMES = {
    "in_layers.0": "spatial_res_block.norm1",
    "in_layers.2": "spatial_res_block.conv1",
    "emb_layers.1": "spatial_res_block.time_emb_proj",
    "out_layers.0": "spatial_res_block.norm2",
    "out_layers.3": "spatial_res_block.conv2",
    "skip_connection": "spatial_res_block.conv_shortcut",
    "time_stack.in_layers.0": "temporal_res_block.norm1",
    "time_stack.in_layers.2": "temporal_res_block.conv1",
    "time_stack.emb_layers.1": "temporal_res_block.time_emb_proj",
    "time_stack.out_layers.0": "temporal_res_block.norm2",
    "time_stack.out_layers.3": "temporal_res_block.conv2",
    "time_mixer": "time_mixer",
}
UNET_FIXED_RENAMES = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}


def _unet_layer_key(rest: str, is_resnet: bool) -> str:
    """A key below one layer: ResBlock parts get diffusers' resnet names; transformer parts keep
    theirs except the temporal stack and the position-embedding MLP."""
    if is_resnet:
        for old, new in sorted(UNET_RESNET_RENAMES.items(), key=lambda kv: -len(kv[0])):
            if rest.startswith(old + "."):
                return new + rest[len(old) :]
        raise AssertionError(f"unmapped resnet key part {rest}")
    rest = re.sub(r"^time_stack\.", "temporal_transformer_blocks.", rest)
    rest = re.sub(r"^time_pos_embed\.0\.", "time_pos_embed.linear_1.", rest)
    return re.sub(r"^time_pos_embed\.2\.", "time_pos_embed.linear_2.", rest)


def unet_key_to_diffusers(key: str, config: SvdUNetConfig) -> str:
    """One checkpoint (sgm) key to diffusers' name, from the two layouts: input block
    ``1 + level*(n+1) + j`` is down block ``level`` layer ``j`` (``level*(n+1) + n+1`` its
    downsampler); output block ``i*(n+1) + j`` is up block ``i`` layer ``j`` (its upsampler last)."""
    for old, new in UNET_FIXED_RENAMES.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    per_level = config.num_res_blocks + 1
    middle = re.fullmatch(r"middle_block\.(\d)\.(.*)", key)
    if middle:  # resnet, transformer, resnet
        index, rest = int(middle.group(1)), middle.group(2)
        prefix = {0: "mid_block.resnets.0", 1: "mid_block.attentions.0", 2: "mid_block.resnets.1"}[index]
        return f"{prefix}.{_unet_layer_key(rest, index != 1)}"
    match = re.fullmatch(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.*)", key)
    assert match, key
    part, index, layer, rest = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    if part == "input_blocks":
        level, j = divmod(index - 1, per_level)
        if j == config.num_res_blocks:
            return f"down_blocks.{level}.downsamplers.0.conv.{rest.removeprefix('op.')}"
        kind = "resnets" if layer == 0 else "attentions"
        return f"down_blocks.{level}.{kind}.{j}.{_unet_layer_key(rest, layer == 0)}"
    level, j = divmod(index, per_level)
    if rest.startswith("conv."):
        return f"up_blocks.{level}.upsamplers.0.{rest}"
    kind = "resnets" if layer == 0 else "attentions"
    return f"up_blocks.{level}.{kind}.{j}.{_unet_layer_key(rest, layer == 0)}"


def diffusers_unet(ours: SvdUNet) -> torch.nn.Module:
    """diffusers' ``UNetSpatioTemporalConditionModel`` shaped like ``ours``, holding its weights."""
    from diffusers import UNetSpatioTemporalConditionModel

    cfg = ours.config
    widths = tuple(cfg.model_channels * m for m in cfg.channel_mult)
    attends = [level in cfg.attention_levels for level in range(len(widths))]
    peer = UNetSpatioTemporalConditionModel(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=tuple(
            "CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in attends
        ),
        up_block_types=tuple(
            "CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in reversed(attends)
        ),
        block_out_channels=widths,
        addition_time_embed_dim=cfg.adm_in_channels // 3,
        projection_class_embeddings_input_dim=cfg.adm_in_channels,
        layers_per_block=cfg.num_res_blocks,
        cross_attention_dim=cfg.context_dim,
        transformer_layers_per_block=cfg.transformer_depth,
        num_attention_heads=tuple(w // cfg.head_dim for w in widths),
    ).eval()
    # sgm's ResBlocks all use GroupNorm eps 1e-5; diffusers builds the resnets of its down blocks
    # with attention with 1e-6. Align the peer so a comparison tests the layout, not that constant.
    for name, module in peer.named_modules():
        if ".resnets." in name and isinstance(module, torch.nn.GroupNorm):
            module.eps = 1e-5
    ours_state = ours.state_dict()
    mapped = {unet_key_to_diffusers(key, cfg): value for key, value in ours_state.items()}
    assert len(mapped) == len(ours_state), "two of our keys map to one diffusers key"
    peer_keys = set(peer.state_dict())
    assert set(mapped) == peer_keys, (sorted(set(mapped) - peer_keys), sorted(peer_keys - set(mapped)))
    peer.load_state_dict(mapped, strict=True)
    return peer


# --- VAE: ldm keys -> diffusers keys -----------------------------------------------------------

VAE_RESNET_RENAMES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
VAE_TIME_STACK_RENAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
}
VAE_ATTENTION_RENAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def vae_resnet_key(rest: str, temporal: bool) -> str:
    """Inside one (Video)ResnetBlock: ldm suffix -> diffusers suffix (``temporal`` for the
    decoder's blocks, whose spatial half diffusers nests under ``spatial_res_block``)."""
    if rest == "mix_factor":
        return "time_mixer.mix_factor"
    if rest.startswith("time_stack."):
        layer, kind = rest[len("time_stack.") :].rsplit(".", 1)
        return f"temporal_res_block.{VAE_TIME_STACK_RENAMES[layer]}.{kind}"
    layer, kind = rest.rsplit(".", 1)
    return ("spatial_res_block." if temporal else "") + f"{VAE_RESNET_RENAMES[layer]}.{kind}"


def _vae_attention(rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    layer, kind = rest.rsplit(".", 1)
    if kind == "weight" and value.ndim == 4:  # 1x1 conv -> linear
        value = value[:, :, 0, 0]
    return f"{VAE_ATTENTION_RENAMES[layer]}.{kind}", value


def _vae_key(key: str, value: torch.Tensor, level: str, index, temporal: bool) -> tuple[str, torch.Tensor]:
    """One ldm Encoder/Decoder key -> diffusers (``level`` is "down" or "up"; ``index`` maps the
    level number, reversed for the decoder whose diffusers blocks run lowest resolution first)."""
    if m := re.fullmatch(rf"{level}\.(\d+)\.block\.(\d+)\.(.+)", key):
        return f"{level}_blocks.{index(int(m[1]))}.resnets.{m[2]}.{vae_resnet_key(m[3], temporal)}", value
    if m := re.fullmatch(rf"{level}\.(\d+)\.{level}sample\.conv\.(\w+)", key):
        return f"{level}_blocks.{index(int(m[1]))}.{level}samplers.0.conv.{m[2]}", value
    if m := re.fullmatch(r"mid\.block_(\d)\.(.+)", key):
        return f"mid_block.resnets.{int(m[1]) - 1}.{vae_resnet_key(m[2], temporal)}", value
    if m := re.fullmatch(r"mid\.attn_1\.(.+)", key):
        name, value = _vae_attention(m[1], value)
        return f"mid_block.attentions.0.{name}", value
    if key.startswith("conv_out.time_mix_conv."):
        return "time_conv_out." + key.rsplit(".", 1)[1], value
    return key.replace("norm_out", "conv_norm_out"), value  # conv_in, conv_out


def vae_to_diffusers(
    encoder_state: Mapping[str, torch.Tensor], decoder_state: Mapping[str, torch.Tensor], levels: int
) -> dict[str, torch.Tensor]:
    """Both components' ldm keys -> ``AutoencoderKLTemporalDecoder`` keys; each key filled once."""
    out = {k: v for k, v in encoder_state.items() if k.startswith("quant_conv.")}
    encoder_only = {k[len("encoder.") :]: v for k, v in encoder_state.items() if k.startswith("encoder.")}
    assert len(out) + len(encoder_only) == len(encoder_state)
    parts = [
        ("encoder.", encoder_only, "down", lambda i: i, False),
        ("decoder.", decoder_state, "up", lambda i: levels - 1 - i, True),
    ]
    for prefix, state, level, index, temporal in parts:
        for key, value in state.items():
            name, value = _vae_key(key, value, level, index, temporal)
            assert prefix + name not in out, f"{prefix + name} filled twice"
            out[prefix + name] = value
    return out


def diffusers_vae(encoder: VaeEncoder, decoder: TemporalDecoder) -> torch.nn.Module:
    """diffusers' ``AutoencoderKLTemporalDecoder`` holding both components' weights. diffusers
    builds encoder and decoder from one width list, so the two must share their widths."""
    from diffusers import AutoencoderKLTemporalDecoder

    cfg = encoder.config
    levels = len(cfg.channels)
    peer = AutoencoderKLTemporalDecoder(
        in_channels=cfg.in_channels,
        out_channels=decoder.config.out_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        block_out_channels=cfg.channels,
        layers_per_block=cfg.res_blocks,
        latent_channels=cfg.embed_dim,
    ).eval()
    mapped = vae_to_diffusers(encoder.state_dict(), decoder.state_dict(), levels)
    assert set(mapped) == set(peer.state_dict()), "every peer key filled exactly once"
    peer.load_state_dict(mapped, strict=True)
    return peer


# --- image encoder: OpenCLIP keys -> transformers keys -----------------------------------------

IMAGE_ENCODER_FIXED_RENAMES = {
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "class_embedding": "vision_model.embeddings.class_embedding",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}
IMAGE_ENCODER_LAYER_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def image_encoder_to_transformers(ours: Mapping[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """OpenCLIP visual keys -> ``CLIPVisionModelWithProjection`` keys; each source key used once
    (the packed q/k/v split in three, the projection transposed)."""
    out: dict[str, torch.Tensor] = {}

    def put(key: str, value: torch.Tensor) -> None:
        assert key not in out, f"{key} filled twice"
        out[key] = value

    for key, value in ours.items():
        if key in IMAGE_ENCODER_FIXED_RENAMES:
            put(IMAGE_ENCODER_FIXED_RENAMES[key], value)
            continue
        if key == "proj":
            put("visual_projection.weight", value.t())
            continue
        m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)", key)  # in_proj_weight: "_"
        assert m, f"unmapped key {key}"
        layer, name, kind = m.groups()
        base = f"vision_model.encoder.layers.{layer}."
        if name == "attn.in_proj":
            for part, chunk in zip("qkv", value.split(width), strict=True):
                put(f"{base}self_attn.{part}_proj.{kind}", chunk)
        else:
            put(f"{base}{IMAGE_ENCODER_LAYER_RENAMES[name]}.{kind}", value)
    return out


def transformers_image_encoder(ours: ImageEncoder) -> torch.nn.Module:
    """transformers' ``CLIPVisionModelWithProjection`` shaped like ``ours``, holding its weights."""
    import transformers

    c = ours.config
    config = transformers.CLIPVisionConfig(
        hidden_size=c.width,
        intermediate_size=c.mlp_width,
        num_hidden_layers=c.layers,
        num_attention_heads=c.heads,
        image_size=c.image_size,
        patch_size=c.patch_size,
        projection_dim=c.output_dim,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    peer = transformers.CLIPVisionModelWithProjection(config).eval()
    mapped = image_encoder_to_transformers(ours.state_dict(), c.width)
    assert set(mapped) == set(peer.state_dict()), "every peer key filled exactly once"
    peer.load_state_dict(mapped, strict=True)
    return peer


# --- sampler and the whole pipeline ------------------------------------------------------------

# The scheduler config shipped with stabilityai/stable-video-diffusion-img2vid(-xt) (diffusers format).
SVD_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}


def diffusers_scheduler():
    """diffusers' ``EulerDiscreteScheduler`` as the official SVD repositories configure it."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG)


def diffusers_pipeline(components: Mapping[str, torch.nn.Module]):
    """diffusers' ``StableVideoDiffusionPipeline`` made of the peers of a loaded model's networks
    (``SvdModel.components``), with CLIP's default image processor."""
    import diffusers
    import transformers

    return diffusers.StableVideoDiffusionPipeline(
        vae=diffusers_vae(components["vae_encoder"], components["decoder"]),
        image_encoder=transformers_image_encoder(components["image_encoder"]),
        unet=diffusers_unet(components["unet"]),
        scheduler=diffusers_scheduler(),
        feature_extractor=transformers.CLIPImageProcessor(),
    )
