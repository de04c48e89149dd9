"""Image folders -> class-mixed WebDataset tar shards with a manifest, and their verification.

Stands alone (no import of pretrain/ or finetune/). Entry points: ``python -m data_prep build|verify``,
or :func:`data_prep.build.build` and :func:`data_prep.verify.verify`.
"""
