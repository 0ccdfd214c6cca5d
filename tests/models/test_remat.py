"""Rematerialization policies (model.remat): every policy gives the gradients of none, and the ones
that keep the Pallas flash forward's outputs run that kernel once per step instead of twice."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.models import Transformer, TransformerConfig
from gen_jax.models.transformer import FLASH_FORWARD_KERNEL, REMAT_POLICIES
from gen_jax.parallel.context import compiling_for
from tests.conftest import pallas_calls

# The Pallas kernels (interpreted on a CPU) with Triton's smallest tiles: 16 tokens.
CFG = TransformerConfig(vocab_size=48, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=64, max_seq_len=16, attention_impl="pallas")
# How often the flash forward kernel appears in the gradient's program (the layer scan's body
# counts once): recomputed in the backward pass unless the policy keeps its outputs.
FORWARD_KERNELS = {"none": 1, "full": 2, "dots": 2, "attention": 1, "dots_attention": 1}


def _kernel_calls(jaxpr, name: str) -> int:
  """pallas_call equations named `name` in a jaxpr and every jaxpr nested in its equations."""
  return sum(str(eqn.params.get("name")) == name for eqn in pallas_calls(jaxpr))


@pytest.fixture(scope="module")
def problem():
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, CFG.vocab_size)
  params = nn.meta.unbox(Transformer(CFG).init(jax.random.key(1), tokens)["params"])
  return tokens, params


def _loss_grad(remat: str):
  model = Transformer(dataclasses.replace(CFG, remat=remat))
  def loss(params, tokens):
    logits = model.apply({"params": params}, tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])
  return jax.grad(loss)


def test_the_policy_table_covers_every_policy():
  assert set(FORWARD_KERNELS) == set(REMAT_POLICIES)


@pytest.mark.parametrize("remat", REMAT_POLICIES)
def test_gradients_equal_no_remat_and_the_forward_kernel_runs_as_the_policy_says(problem, remat):
  tokens, params = problem
  grad = _loss_grad(remat)
  jaxpr = jax.make_jaxpr(grad)(params, tokens).jaxpr
  assert _kernel_calls(jaxpr, FLASH_FORWARD_KERNEL) == FORWARD_KERNELS[remat]
  if remat != "none":
    expected = jax.jit(_loss_grad("none"))(params, tokens)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 jax.jit(grad)(params, tokens), expected)


def test_the_model_runs_the_mosaic_gpu_forward_kernel_on_a_gpu():
  """attention_impl="pallas_mosaic" traced for a GPU: the forward kernel is the Mosaic GPU one
  (an mpmd_map, not a Triton pallas_call), run again in the backward pass under remat=full.
  (JAX's partial evaluation of mpmd_map never saves its outputs, so the attention policies
  recompute it too: a JAX limitation, docs/BENCHMARKS.md.) On a CPU, without remat, the
  interpreter's three kernels sit in the layer loop as side effects (host callbacks), which
  flax's check of broadcast variables refused on JAX 0.11 (the Transformer turns it off)."""
  config = dataclasses.replace(CFG, head_dim=64, dtype="bfloat16", attention_impl="pallas_mosaic",
                               remat="full")
  tokens = jnp.zeros((1, 16), jnp.int32)

  def kernels(config):
    def loss(params):
      return jnp.mean(Transformer(config).apply({"params": params}, tokens).astype(jnp.float32))
    params = jax.eval_shape(lambda: nn.meta.unbox(
        Transformer(config).init(jax.random.key(1), tokens)["params"]))
    return [(eqn.primitive.name, str(eqn.params.get("name")))
            for eqn in pallas_calls(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)]

  # Traced for a GPU: the interpreter's host callbacks (a CPU's) cannot sit under remat.
  with compiling_for("gpu"):
    calls = kernels(config)
  assert [primitive for primitive, name in calls if name == FLASH_FORWARD_KERNEL] == [
      "mpmd_map"] * 2
  assert [primitive for primitive, _ in kernels(dataclasses.replace(config, remat="none"))] == [
      "mpmd_map"] * 3
