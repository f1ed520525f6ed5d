"""The local engine: OmniOPD training in one process on CPU or one GPU (see docs/local.md).

`omniopd_verl.local.train.run(config_path, overrides)` is what `omniopd-verl train --engine local` calls.
Heavy imports (transformers, verl) happen inside the submodules, not here.
"""
