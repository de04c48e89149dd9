"""RandAugment from a timm-style string ('rand-m20-n2-p1.0'), its magnitude applied on the TF/big_vision scale.

The scale. In TF's RandAugment (tensorflow/tpu `autoaugment.py`, forked as big_vision's `pp/autoaugment.py`, which
the Mixer paper used) magnitude m sets every op's level to m/10 of that op's "max" range (rotate 30 m/10 degrees,
shear 0.3 m/10, translate 100 m/10 px, enhance factor 1.8 m/10 + 0.1, solarize-add 110 m/10, ...) and nothing caps
it: m20 rotates by 60 degrees. timm's ops use the same per-op formulas but clip the magnitude at 10 unless the
string sets `mmax`, and clamp solarize-add's amount at 128, so timm runs 'rand-m20' as m10. Here:

- the configured `m` is applied as is: the magnitude ceiling is the string's `mmax` if it sets one, 10 for the
  increasing ops (`inc1`, whose formulas end at their strongest setting at 10), and none otherwise;
- solarize-add adds int(110 m/10) (TF's formula, no clamp at 128);
- posterize keeps `bits` bits for every bits in [0, 8] (0 bits: black, as TF and Pillow < 13 do; Pillow 13 refuses
  0), all of them at 8 or more (timm's own rule; TF's formula is undefined there);
- `randaugment_problem` names a string whose `m` would be clipped anywhere (above its `mmax`, or above 10 with
  `inc1`), which the config refuses. Magnitude noise (`mstd`) draws are clipped to [0, ceiling], as in timm.

Keys, as timm's: m (magnitude, default 10), n (ops per image, 2), p (probability of applying each chosen op, 0.5;
TF applies it always: p1.0), mstd (std of Gaussian magnitude noise; > 100: uniform in [0, m]), mmax (ceiling),
inc (1: the increasing ops). Hyper-parameters as timm's create_transform (translate 45 % of the size, the fill
is the mean colour). Differences from TF's op set that remain are listed in docs/design.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from timm.data.auto_augment import RandAugment, rand_augment_choices, rand_augment_ops
from timm.data.transforms import str_to_pil_interp

LEVEL_DENOM = 10.0  # m/10 of each op's range: TF's _MAX_LEVEL, timm's _LEVEL_DENOM
INCREASING_END = 10.0  # the increasing ops' strongest setting (enhance factor 0.1 or 1.9, posterize 0 bits, ...)
KEYS = ("m", "n", "p", "mstd", "mmax", "inc")
_POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing")


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed RandAugment string (see the module doc for the keys)."""

    magnitude: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float | None = None
    increasing: bool = False

    @property
    def ceiling(self) -> float:
        """The largest magnitude an op applies: `mmax`, else 10 for the increasing ops, else none (inf)."""
        if self.magnitude_max is not None:
            return self.magnitude_max
        return INCREASING_END if self.increasing else math.inf


def parse_randaugment(config: str) -> RandAugmentSpec:
    """Parse 'rand-m20-n2-p1.0'; a ValueError names the string and the bad section."""

    def bad(why: str) -> ValueError:
        return ValueError(f"bad randaugment string {config!r}: {why}")

    sections = config.split("-")
    if sections[0] != "rand":
        raise bad("it must start with 'rand'")
    values: dict[str, float] = {}
    for section in sections[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", section)
        if match is None or match.group(1) not in KEYS:
            raise bad(f"unknown section {section!r} (known: {', '.join(k + 'N' for k in KEYS)})")
        values[match.group(1)] = float(match.group(2))
    if "n" in values and (values["n"] != int(values["n"]) or values["n"] < 1):
        raise bad(f"n must be a positive integer, got {values['n']:g}")
    if not 0.0 <= values.get("p", 0.5) <= 1.0:
        raise bad(f"p must be a probability in [0, 1], got {values['p']:g}")
    if values.get("inc", 0) not in (0, 1):
        raise bad(f"inc must be 0 or 1, got {values['inc']:g}")
    mstd = values.get("mstd", 0.0)
    return RandAugmentSpec(
        magnitude=values.get("m", 10.0),
        num_layers=int(values.get("n", 2)),
        prob=values.get("p", 0.5),
        magnitude_std=math.inf if mstd > 100 else mstd,
        magnitude_max=values.get("mmax"),
        increasing=bool(values.get("inc", 0)),
    )


def randaugment_problem(config: str) -> str | None:
    """Why `config` cannot be applied as written (unparsable, or its magnitude would be clipped), or None; the
    sentence names the string."""
    try:
        spec = parse_randaugment(config)
    except ValueError as err:
        return str(err)
    m, at = f"{spec.magnitude:g}", f"randaugment {config!r}: magnitude"
    if spec.magnitude_max is not None and spec.magnitude > spec.magnitude_max:
        return (f"{at} {m} would be clipped to {spec.magnitude_max:g} by mmax{spec.magnitude_max:g}; raise mmax to "
                f"at least {m} or drop it (no ceiling on the TF scale)")
    if spec.increasing and spec.magnitude > INCREASING_END:
        return (f"{at} {m} would be clipped to {INCREASING_END:g}: the increasing ops (inc1) reach their strongest "
                f"setting at {INCREASING_END:g}; use m <= {INCREASING_END:g}, or drop inc1 for the TF/big_vision ops, "
                f"where m > 10 goes past each op's range (the Mixer paper's m15, m20)")
    return None


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Keep the `bits_to_keep` high bits of each channel: 0 gives black (TF, Pillow < 13), >= 8 the image."""
    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    if bits < 0:
        raise ValueError(f"posterize: cannot keep {bits} bits")
    mask = 0xFF & ~(2 ** (8 - bits) - 1)
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


def solarize_add_level(level: float, _hparams: dict) -> tuple[int]:
    """TF's solarize-add amount, int(110 m/10), without timm's clamp at 128."""
    return (int(level / LEVEL_DENOM * 110),)


def rand_augment(config: str, img_size: int, mean: Sequence[float], interpolation: str) -> RandAugment:
    """timm's RandAugment ops for `config`, the magnitude on the TF scale (module doc); a ValueError names a string
    that cannot be applied as written."""
    problem = randaugment_problem(config)
    if problem is not None:
        raise ValueError(problem)
    spec = parse_randaugment(config)
    hparams = {
        "translate_const": int(img_size * 0.45),
        "img_mean": tuple(min(255, round(255 * x)) for x in mean),
        "magnitude_std": spec.magnitude_std,
        "magnitude_max": spec.ceiling,
    }
    if interpolation != "random":
        hparams["interpolation"] = str_to_pil_interp(interpolation)
    names = rand_augment_choices("default", increasing=spec.increasing)  # timm's 15 ops (TF's 16 less Cutout)
    ops = rand_augment_ops(magnitude=spec.magnitude, prob=spec.prob, hparams=hparams, transforms=names)
    for op in ops:
        if op.name in _POSTERIZE_OPS:
            op.aug_fn = posterize
        elif op.name == "SolarizeAdd":
            op.level_fn = solarize_add_level
    return RandAugment(ops, spec.num_layers)
