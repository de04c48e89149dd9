"""timm's RandAugment, configured as timm's create_transform does, with posterize made safe for Pillow >= 13.

timm's posterize passes its `bits` straight to PIL.ImageOps.posterize, which since Pillow 13 raises
"bits must be between or equal to 1 and 8" for 0 bits; magnitude noise (mstd) with the increasing variant
(inc1) reaches 0 bits (e.g. rand-m9-mstd0.5-inc1 at magnitude >= 10). We clamp bits to [1, 8] in the ops of
our RandAugment instance; timm itself is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from timm.data.auto_augment import RandAugment, posterize, rand_augment_transform
from timm.data.transforms import str_to_pil_interp


def clamped_posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize with `bits_to_keep` clamped to [1, 8]."""
    return posterize(img, min(max(int(bits_to_keep), 1), 8), **kwargs)


def guard_posterize(ra: RandAugment) -> RandAugment:
    """Swap timm's posterize for the clamped one in every op of `ra` (in place); returns `ra`."""
    for op in ra.ops:
        if op.aug_fn is posterize:
            op.aug_fn = clamped_posterize
    return ra


def rand_augment(config: str, img_size: int, mean: Sequence[float], interpolation: str) -> RandAugment:
    """RandAugment from a timm string like 'rand-m9-mstd0.5-inc1', hyper-parameters as in timm's
    transforms_imagenet_train (translate 45% of the size, fill with the mean colour)."""
    if not config.startswith("rand"):
        raise ValueError(f"randaugment must be a timm 'rand-...' string, got {config!r}")
    hparams = {
        "translate_const": int(img_size * 0.45),
        "img_mean": tuple(min(255, round(255 * x)) for x in mean),
    }
    if interpolation != "random":
        hparams["interpolation"] = str_to_pil_interp(interpolation)
    try:
        ra = rand_augment_transform(config, hparams)
    except (AssertionError, ValueError, KeyError) as exc:
        raise ValueError(f"bad randaugment string {config!r}: {exc or 'unknown section'}") from None
    return guard_posterize(ra)
