"""Build DeepSpeed's CPU shared-memory collective op once at setup (it is JIT-compiled and cached otherwise).

Without this, the first run after install spends 40-100 s compiling it inside the first process group.
"""

from __future__ import annotations

import sys


def main() -> int:
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not builder.is_compatible():
        print("deepspeed: no shared-memory comm op for this accelerator; nothing to build")
        return 0
    builder.load()
    print(f"deepspeed: {builder.absolute_name()} ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
