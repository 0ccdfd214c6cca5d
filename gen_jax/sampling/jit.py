"""How the decoding loops are compiled: `jax.jit` with XLA options chosen for the platform the
program is compiled for.

The loops that decode with stacked layers (`TransformerConfig.scan_layers`) run a `lax.scan` over
the layers inside the token loop: each step takes every layer's weights out of the stacks at the
layer index. XLA:GPU's default program copies them out (a Triton GEMM fusion cannot take a slice at
a traced offset, and its dot merger concatenates the gate and up kernels every step), so a step
moved 2.5x (1.1B) to 3x (7B) the bytes of its weights. With products as cuBLAS calls instead of
Triton GEMMs, XLA's dynamic-slice fusion hands each call its layer's weights as an offset into the
stack, and without the dot merger nothing is concatenated: 1.01x for both, and a batch of 32 rows
moves 1.14-1.22x instead of 1.34-3.26x (benchmarks/aot_hlo.py's estimates of XLA:GPU's compiled
program for an H200; docs/BENCHMARKS.md). Only the decoding programs get these options: whether a
train step gains from them is a timing question for the device (benchmarks/device_checks.sh's
lm_train_flags; by the same estimate the 1b preset's step would move 304.6 instead of 326.7 GiB
in memory-bound kernels and 193.4 instead of 174.1 GiB in products, docs/BENCHMARKS.md).

`COMPILER_OPTIONS[platform]` is read when a call compiles, so a researcher can compare or drop them
(`COMPILER_OPTIONS["gpu"] = {}`) without touching the loops.
"""
import functools
from typing import Any, Callable

import jax

from gen_jax.parallel.context import target_platform

COMPILER_OPTIONS: dict[str, dict[str, Any]] = {
    "gpu": {
        "xla_gpu_enable_triton_gemm": False,
        "xla_gpu_enable_dynamic_slice_fusion": True,
        "xla_disable_hlo_passes": "dot-merger",
    },
}


class DecodingJit:
  """`jax.jit(fun, **jit_kwargs)` compiled with `COMPILER_OPTIONS` of the platform traced for
  (`parallel.context.target_platform`: this host's backend, or a `compiling_for` target). Called
  like the jitted function; its other attributes (`lower`, `trace`, ...) are that jitted
  function's."""

  def __init__(self, fun: Callable, jit_kwargs: dict):
    self._fun, self._jit_kwargs = fun, jit_kwargs
    functools.update_wrapper(self, fun)

  @functools.lru_cache(maxsize=None)
  def _jitted(self, options: tuple) -> Callable:
    return jax.jit(self._fun, **self._jit_kwargs, compiler_options=dict(options) or None)

  def _for_target(self) -> Callable:
    return self._jitted(tuple(sorted(COMPILER_OPTIONS.get(target_platform(), {}).items())))

  def __call__(self, *args, **kwargs):
    return self._for_target()(*args, **kwargs)

  def __getattr__(self, name: str):  # Only names the instance itself lacks.
    if name.startswith("__") or name in ("_fun", "_jit_kwargs"):
      raise AttributeError(name)
    return getattr(self._for_target(), name)


def decoding_jit(**jit_kwargs) -> Callable[[Callable], DecodingJit]:
  """Decorator: `DecodingJit` of the function with jax.jit's keyword arguments."""
  return lambda fun: DecodingJit(fun, jit_kwargs)
