#!/usr/bin/env bash
# Downloads, here, the wheels that benchmarks/device_checks.sh installs on a lent GPU machine.
#
#   bash benchmarks/device_wheels.sh        # writes .whl/ (git-ignored, about 8 MB)
#
# That machine cannot reach a package registry; its image (Python 3.12, JAX with CUDA, flax,
# optax, orbax-checkpoint, chex, tokenizers, safetensors, torch, transformers) lacks only these of
# what the benchmarks import: grain and array_record (gen_jax.data), ml_collections (configs), gguf
# (gen_jax.interop) and portpicker (grain's). The versions are the ones setup.py was measured with.
# --no-deps: their own needs are in the image already. The image's JAX (0.11 in 2026-11) is newer
# than setup.py allows. .whl/core/ holds flax, optax, orbax-checkpoint and chex at versions seen
# working with JAX 0.11.2 (the test suite's kernels, ops, models, sampling, parallel, quant and
# objectives on a CPU under Python 3.12, 2026-12-04); device_checks.sh installs them only if
# gen_jax fails to import with the image's own (pure Python; they then shadow the image's).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 gguf==0.19.0 portpicker==1.6.0
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp -d .whl/core flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8 chex==0.1.92
ls -l .whl .whl/core
