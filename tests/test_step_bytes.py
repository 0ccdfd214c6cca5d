"""benchmarks/step_bytes.py: the bytes a decoding step must read, the roofline's denominator."""
import dataclasses
import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.models import Transformer, TransformerConfig

_PATH = pathlib.Path(__file__).parent.parent / "benchmarks" / "step_bytes.py"
_SPEC = importlib.util.spec_from_file_location("step_bytes", _PATH)
step_bytes = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(step_bytes)

CFG = TransformerConfig(vocab_size=100, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, max_seq_len=32)


def _shapes(config):
  init = lambda: Transformer(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))  # noqa: E731
  return nn.meta.unbox(jax.eval_shape(init)["params"])


def _bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_a_dense_step_reads_every_weight_but_the_input_embedding_and_the_cache():
  shapes = _shapes(CFG)
  cache = 2 * 2 * 3 * 10 * 2 * 8 * 4  # keys and values, layers, rows, slots, kv heads, head_dim
  embedding = 100 * 32 * 4
  assert step_bytes.must_read(CFG, shapes, rows=3, slots=10) == _bytes(shapes) - embedding + cache
  tied = dataclasses.replace(CFG, tie_embeddings=True)
  assert step_bytes.must_read(tied, _shapes(tied), 1, 10) == _bytes(_shapes(tied)) + cache // 3


def test_a_mixture_reads_only_the_experts_its_rows_can_choose():
  moe = dataclasses.replace(CFG, num_experts=8, experts_per_token=2)
  shapes = _shapes(moe)
  mlp = shapes["layers"]["mlp"]
  experts = sum(_bytes(mlp[name]) for name in ("wi_gate", "wi_up", "wo"))
  everything = step_bytes.must_read(moe, shapes, rows=4, slots=10)  # 8 choices: every expert
  one_row = step_bytes.must_read(moe, shapes, rows=1, slots=10)
  cache_per_row = 2 * 2 * 10 * 2 * 8 * 4
  assert everything - 3 * cache_per_row - one_row == experts * 3 // 4
