"""MLP-Mixer (Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture for Vision").

Architecture as the paper and the official Flax code: a per-patch linear stem (a convolution with kernel =
stride = patch), ``num_blocks`` Mixer blocks (LayerNorm -> token-mixing MLP across patches -> residual;
LayerNorm -> channel-mixing MLP -> residual), a final LayerNorm, global average pooling over tokens and a
linear head. LayerNorm eps is 1e-6 (Flax's default).

Parameter names are those of ``timm.models.mlp_mixer.MlpMixer`` (``stem.proj``, ``blocks.{i}.norm1``,
``blocks.{i}.mlp_tokens.fc1``/``fc2``, ``blocks.{i}.norm2``, ``blocks.{i}.mlp_channels.fc1``/``fc2``,
``norm``, ``head``), so state dicts load into either model unchanged.

GELU: ``gelu="exact"`` (erf, as timm and ``nn.GELU``) or ``gelu="tanh"``. Flax's ``nn.gelu`` is the tanh
approximation, so the official checkpoints were trained with ``"tanh"``; the two differ by at most 4.7e-4 per
activation.

Initialisation (in each layer's constructor, see ``layers.py``; safe under DeepSpeed ZeRO-3 ``zero.Init``):
- ``init="flax"`` (the official code, i.e. Flax defaults): lecun-normal kernels for the stem and every Dense
  layer, zero biases, LayerNorm scale 1 and bias 0, head weight and bias zero.
- ``init="timm"`` (timm's ``_init_weights`` default): lecun-normal stem with zero bias, xavier-uniform MLP
  kernels with normal(std=1e-6) biases, LayerNorm 1/0, head weight and bias zero.

Regularisation: ``drop_rate`` is dropout on the hidden activation and on the output of every MLP (timm's
``proj_drop_rate``); ``drop_path_rate`` is stochastic depth, the per-block rate rising linearly from 0 (first
block) to ``drop_path_rate`` (last block) as in big_vision.

Speed: the token-mixing MLP works on the (B, N, C) residual layout directly, one batched matmul per layer with
the bias fused (``baddbmm``), instead of transposing to (B, C, N) and back around two Linear layers; the stem
output is made contiguous once so the residual stream stays contiguous. Results equal timm's to float
rounding. Each of those matmuls is the forward of its own layer (``TokenDense``), called as a module, so module
hooks see every use of every weight: DeepSpeed ZeRO-3 gathers a partitioned weight in its layer's pre-forward
hook, also in a forward that does not go through the engine (an evaluation's ``forward_features``).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from pretrain.models.layers import DropPath, LecunConv2d, LecunDense, XavierDense, ZeroDense

InitScheme = Literal["flax", "timm"]
GeluKind = Literal["exact", "tanh"]

_DENSE = {"flax": LecunDense, "timm": XavierDense}
_GELU_APPROXIMATE = {"exact": "none", "tanh": "tanh"}
_LN_EPS = 1e-6


class PatchStem(nn.Module):
    """Per-patch linear embedding: (B, in_chans, H, W) -> (B, num_tokens, embed_dim), tokens row-major."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.proj = LecunConv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"input is {x.shape[-2]}x{x.shape[-1]} "
                f"but the model was built for {self.img_size[0]}x{self.img_size[1]}"
            )
        return rearrange(self.proj(x), "b c h w -> b (h w) c").contiguous()


class TokenDense:
    """A Linear layer (a mixin before an ``nn.Linear`` class) applied across the token axis of the (B, N, C) layout:
    (B, in_features, C) -> (B, out_features, C), one batched matmul with the bias fused, no transposes."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.expand(x.shape[0], -1, -1)
        return torch.matmul(weight, x) if self.bias is None else torch.baddbmm(self.bias[:, None], weight, x)


class TokenLecunDense(TokenDense, LecunDense):
    """``LecunDense`` across tokens."""


class TokenXavierDense(TokenDense, XavierDense):
    """``XavierDense`` across tokens."""


_TOKEN_DENSE = {"flax": TokenLecunDense, "timm": TokenXavierDense}


class TokenMixingMlp(nn.Module):
    """MLP across tokens, shared by all channels: (B, N, C) -> (B, N, C).

    ``fc1`` (N -> hidden) and ``fc2`` (hidden -> N) are Linear layers as in timm (``TokenDense``), applied to each
    channel's column of tokens with a batched matmul on the (B, N, C) layout, so no transposes are needed.
    """

    def __init__(self, num_tokens: int, hidden: int, dense: type[nn.Linear], gelu: str, drop: float) -> None:
        super().__init__()
        self.fc1 = dense(num_tokens, hidden)
        self.fc2 = dense(hidden, num_tokens)
        self.approximate = _GELU_APPROXIMATE[gelu]
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.gelu(self.fc1(x), approximate=self.approximate))  # (B, hidden, C)
        return self.drop(self.fc2(h))  # (B, N, C)


class ChannelMixingMlp(nn.Module):
    """MLP across channels, shared by all tokens: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, hidden: int, dense: type[nn.Linear], gelu: str, drop: float) -> None:
        super().__init__()
        self.fc1 = dense(dim, hidden)
        self.fc2 = dense(hidden, dim)
        self.approximate = _GELU_APPROXIMATE[gelu]
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.gelu(self.fc1(x), approximate=self.approximate))
        return self.drop(self.fc2(h))


class MixerBlock(nn.Module):
    """Token mixing then channel mixing, each pre-normed and residual, each under stochastic depth."""

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        tokens_dim: int,
        channels_dim: int,
        init: InitScheme,
        gelu: str,
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp_tokens = TokenMixingMlp(num_tokens, tokens_dim, _TOKEN_DENSE[init], gelu, drop)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp_channels = ChannelMixingMlp(dim, channels_dim, _DENSE[init], gelu, drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x)))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class MlpMixer(nn.Module):
    """MLP-Mixer classifier; see the module docstring for architecture, init and naming."""

    def __init__(
        self,
        num_classes: int = 1000,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        patch_size: int = 16,
        num_blocks: int = 8,
        embed_dim: int = 512,
        tokens_dim: int = 256,
        channels_dim: int = 2048,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init: InitScheme = "flax",
        gelu: GeluKind = "exact",
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if size[0] % patch_size or size[1] % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if init not in _DENSE:
            raise ValueError(f"init must be one of {sorted(_DENSE)}, got {init!r}")
        if gelu not in _GELU_APPROXIMATE:
            raise ValueError(f"gelu must be one of {sorted(_GELU_APPROXIMATE)}, got {gelu!r}")
        if not 0.0 <= drop_rate < 1.0 or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(
                f"drop_rate and drop_path_rate must be in [0, 1), got {drop_rate}, {drop_path_rate}"
            )
        self.num_classes = num_classes
        self.num_features = embed_dim
        self.patch_size = patch_size
        self.img_size = img_size
        self.grid_size = (size[0] // patch_size, size[1] // patch_size)
        self.num_tokens = self.grid_size[0] * self.grid_size[1]
        self.grad_checkpointing = False

        self.stem = PatchStem(size, patch_size, in_chans, embed_dim)
        rates = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        self.blocks = nn.Sequential(
            *[
                MixerBlock(
                    self.num_tokens, embed_dim, tokens_dim, channels_dim, init, gelu, drop_rate, rate
                )
                for rate in rates
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=_LN_EPS)
        self.head = ZeroDense(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> normalised tokens (B, num_tokens, num_features)."""
        x = self.stem(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, C) -> pooled features (B, C) if ``pre_logits`` else logits (B, num_classes)."""
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a zero-initialised one for ``num_classes`` (0: no head)."""
        ref = self.norm.weight
        self.num_classes = num_classes
        self.head = (
            ZeroDense(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable
