"""The Mixer weights that see natural images as another Mixer sees patch-and-pixel-shuffled ones (paper, 3.4).

Let P shuffle the patches of an image by ``token_order`` (tau) and the pixels inside every patch by
``pixel_order`` (pi), as ``pretrain.data.FixedPermutation("patches", ...)`` does: output patch t is input patch
tau(t), output pixel q of a patch is its input pixel pi(q). For a Mixer with weights theta and patch size p,

    Mixer(permute_mixer_weights(theta, tau, pi))(x) == Mixer(theta)(P(x))      for every x.

Proof, layer by layer (in ``tests/test_permutation.py`` numerically):
- stem: token t of Mixer(theta) on P(x) is sum_q W[q] x[tau(t), pi(q)] = sum_q' W[pi^-1(q')] x[tau(t), q'], the
  stem with kernel positions W'[q'] = W[pi^-1(q')] applied to input patch tau(t). So the token sequence is that
  of the new stem on x, reordered by tau.
- channel mixing, LayerNorms: per token, so they commute with any reordering of tokens.
- token mixing: fc1 sums over tokens, sum_t W1[:, t] z[tau(t)] = sum_s W1[:, tau^-1(s)] z[s], so W1' takes the
  columns tau^-1; fc2 writes token t, which must land at tau(t), so W2' and its bias take the rows tau^-1.
- global average pooling over tokens ignores their order, and the head acts after it.

A Mixer trained on shuffled images is therefore a Mixer trained on the originals with its weights shuffled: this
turns its weights into ones that take natural images (e.g. to draw its token-mixing weights on the patch grid).
Under "global shuffling" (all pixels, patches not kept together) no such weights exist in general.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def permute_mixer_weights(state: Mapping[str, torch.Tensor], token_order: torch.Tensor,
                          pixel_order: torch.Tensor) -> dict[str, torch.Tensor]:
    """A copy of the Mixer state dict `state` with its stem kernel positions permuted by ``pixel_order``'s
    inverse and every token-mixing fc1 column / fc2 row and bias by ``token_order``'s inverse (see above)."""
    stem = state["stem.proj.weight"]
    embed_dim, in_chans, ph, pw = stem.shape
    tokens = state["blocks.0.mlp_tokens.fc1.weight"].shape[1]
    if pixel_order.numel() != ph * pw or token_order.numel() != tokens:
        raise ValueError(f"permutations of {token_order.numel()} tokens and {pixel_order.numel()} pixels per patch "
                         f"do not fit a Mixer with {tokens} tokens and {ph}x{pw} patches")
    inv_pixel = torch.argsort(pixel_order).to(stem.device)
    out = dict(state)
    out["stem.proj.weight"] = stem.reshape(embed_dim, in_chans, ph * pw)[:, :, inv_pixel].reshape(stem.shape)
    for key, value in state.items():
        if ".mlp_tokens." not in key:
            continue
        inv_token = torch.argsort(token_order).to(value.device)
        if key.endswith("fc1.weight"):
            out[key] = value[:, inv_token]
        elif key.endswith("fc2.weight") or key.endswith("fc2.bias"):
            out[key] = value[inv_token]
    return out
