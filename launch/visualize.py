"""Weight pictures: `python launch/visualize.py --checkpoint PATH [--out DIR]`.

Writes `token_mixing.png` (the first blocks' token-mixing hidden units on the patch grid, the MLP-Mixer paper's
Figure 5) and `stem_filters.png` (the patch-embedding filters as RGB) for a run dir, a checkpoint dir or a weights
file (.safetensors, timm .pth, official .npz). The same pictures go to TensorBoard during training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python launch/x.py` puts launch/ on sys.path

from launch.cli import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run dir, checkpoint dir or weights file")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: <checkpoint dir>/pictures)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 1], help="token-mixing blocks to draw")
    parser.add_argument("--max-units", type=int, default=64, help="hidden units (or stem filters) per picture")
    parser.add_argument("--scale", type=int, default=4, help="screen pixels per weight")
    args = parser.parse_args(argv)
    from finetune.init import read_state_dict
    from pretrain.models import mixer_for_weights
    from pretrain.telemetry.weight_images import save_png, stem_filters_image, token_mixing_image

    checkpoint = Path(args.checkpoint)
    state = read_state_dict(checkpoint)
    model = mixer_for_weights(state)
    model.load_state_dict(state)
    out = Path(args.out) if args.out else (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "pictures"
    save_png(token_mixing_image(model, blocks=args.blocks, max_units=args.max_units), out / "token_mixing.png",
             scale=args.scale)
    save_png(stem_filters_image(model, max_units=args.max_units), out / "stem_filters.png", scale=args.scale)
    print(f"wrote {out / 'token_mixing.png'} and {out / 'stem_filters.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
