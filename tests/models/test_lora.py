"""LoRA adapters (gen_jax.lora): a fresh adapter changes nothing, an adapted projection equals a
numpy x W + (x A B) alpha / r, merged kernels reproduce the adapted model, adapters sit only on the
targeted projections, bad fields are named, adapters over int8/int4 weights (QLoRA) equal the float
model on the dequantized weights plus the same adapters, and gradients reach A and B."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import lora, quant
from gen_jax.partition import merge_params
from gen_jax.config import ConfigError
from gen_jax.models import Transformer, TransformerConfig
from gen_jax.quant.projection import Projection
from tests.conftest import tiny_config

CFG = TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, max_seq_len=16)
ALL_TARGETS = ",".join(lora.LORA_TARGETS)
RANK, ALPHA = 4, 8.0
GROUP = 16  # Divides embed_dim, num_heads * head_dim and mlp_dim.


def _adapted(targets=ALL_TARGETS, **fields):
  return dataclasses.replace(CFG, lora_rank=RANK, lora_alpha=ALPHA, lora_targets=targets, **fields)


@functools.lru_cache  # Compiling a scanned init takes seconds; tests share each config's params.
def _init(config, seed=0):
  init = jax.jit(Transformer(config).init)
  return nn.meta.unbox(init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])


def _param_paths(config):
  """The paths of Transformer(config)'s params, from shapes alone (nothing compiled)."""
  shapes = jax.eval_shape(Transformer(config).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  return _paths(nn.meta.unbox(shapes["params"]))


def _logits(config, params, tokens):
  return jax.jit(Transformer(config).apply)({"params": params}, tokens)


def _randomize_b(params, seed=1, std=0.2):
  """Every lora_b drawn from N(0, std^2), so the adapters change the model."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      std * jax.random.normal(key, x.shape, x.dtype) if path[-1].key == "lora_b" else x
      for key, (path, x) in zip(keys, leaves)])


def _paths(tree):
  return {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


TOKENS = np.random.default_rng(5).integers(0, CFG.vocab_size, (2, 12))


def test_a_fresh_adapter_leaves_the_logits_unchanged():
  config = _adapted()
  params = _init(config)
  for path, x in jax.tree_util.tree_leaves_with_path(lora.adapter_params(params)):
    if path[-1].key == "lora_b":
      assert not np.any(np.asarray(x))
    else:  # PEFT's kaiming-uniform(a=sqrt(5)): uniform(+-1/sqrt(in)), variance 1 / (3 in).
      bound = 1 / np.sqrt(x.shape[-2])
      assert np.abs(np.asarray(x)).max() <= bound
      assert 0.8 < float(jnp.std(x)) / (bound / np.sqrt(3)) < 1.2, path
  plain = _logits(CFG, lora.base_params(params), TOKENS)
  np.testing.assert_allclose(_logits(config, params, TOKENS), plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [0, 8])
@pytest.mark.parametrize("projection", ["query", "out"])
def test_projection_equals_numpy_reference(projection, bits):
  """query: [b, t, d] -> [b, t, n, h]; out: [b, t, n, h] -> [b, t, d]; kernel float or int8."""
  d, n, h, r, alpha = 32, 4, 8, 3, 6.0
  if projection == "query":
    features, names, x_shape = (n, h), ("embed", "heads", "head_dim"), (2, 5, d)
  else:
    features, names, x_shape = (d,), ("heads", "head_dim", "embed"), (2, 5, n, h)
  module = Projection(features, names, weight_bits=bits, group_size=GROUP, lora_rank=r,
                      lora_alpha=alpha)
  x = jax.random.normal(jax.random.key(0), x_shape)
  params = nn.meta.unbox(module.init(jax.random.key(1), x)["params"])
  params["lora_b"] = jax.random.normal(jax.random.key(2), params["lora_b"].shape)
  w = np.asarray(jax.random.normal(jax.random.key(3), (d, d)), np.float64)  # [in, out]
  if bits:
    params["qweight"], params["scale"] = quant.quantize(jnp.asarray(w, jnp.float32), bits, GROUP)
    # Codes times their group's scale: [in / g, g, out] * [in / g, 1, out].
    w = (np.asarray(params["qweight"], np.float64) *
         np.asarray(params["scale"], np.float64)[:, None, :]).reshape(d, d)
  else:
    params["kernel"] = jnp.asarray(w.reshape(params["kernel"].shape), jnp.float32)
  assert params["lora_a"].shape == (d, r) and params["lora_b"].shape == (r, d)
  got = module.apply({"params": params}, x)
  flat = np.asarray(x, np.float64).reshape(10, d)
  a, b = np.asarray(params["lora_a"], np.float64), np.asarray(params["lora_b"], np.float64)
  expected = (flat @ w + (flat @ a @ b) * alpha / r).reshape(*x_shape[:2], *features)
  assert got.shape == expected.shape
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
  adapter = (flat @ a @ b) * alpha / r
  assert np.abs(adapter).max() > 0.1 * np.abs(flat @ w).max()  # The adapter term is not tiny.


def test_merged_kernels_reproduce_the_adapted_model():
  config = _adapted()
  params = _randomize_b(_init(config))
  adapted = _logits(config, params, TOKENS)
  merged, merged_config = lora.merge_adapters(params, config)
  assert merged_config == dataclasses.replace(config, lora_rank=0)
  assert not lora.adapter_params(merged) and _paths(merged) == _param_paths(CFG)
  np.testing.assert_allclose(_logits(merged_config, merged, TOKENS), adapted, rtol=1e-5,
                             atol=1e-5)
  base = _logits(CFG, lora.base_params(params), TOKENS)
  assert float(jnp.max(jnp.abs(adapted - base))) > 0.1  # The adapters do change the logits.
  projections = [("layers", "attention", name) for name in ("query", "key", "value", "out")]
  projections += [("layers", "mlp", name) for name in ("wi_gate", "wi_up", "wo")] + [("lm_head",)]
  for where in projections:
    before, after = params, merged
    for key in where:
      before, after = before[key], after[key]
    assert after["kernel"].shape == before["kernel"].shape
    assert float(jnp.max(jnp.abs(after["kernel"] - before["kernel"]))) > 1e-2, where


def test_merge_adapters_checks_params_against_the_config():
  config = _adapted()
  params = _randomize_b(_init(config))
  with pytest.raises(ValueError, match=r"params: adapters on \['key', 'lm_head', 'out', 'query', "
                                       r"'value', 'wi_gate', 'wi_up', 'wo'\], but "
                                       r"model.lora_targets is 'query,key'"):
    lora.merge_adapters(params, dataclasses.replace(config, lora_targets="query,key"))
  with pytest.raises(ConfigError, match=r"model.lora_rank: is 0"):
    lora.merge_adapters(params, CFG)


def test_only_targeted_projections_carry_adapters_and_the_split_is_exact():
  config = _adapted("key,wi_up,lm_head")
  params = _init(config)
  adapters, base = lora.adapter_params(params), lora.base_params(params)
  assert _paths(adapters) == {(*where, leaf) for leaf in ("lora_a", "lora_b") for where in (
      ("layers", "attention", "key"), ("layers", "mlp", "wi_up"), ("lm_head",))}
  key = adapters["layers"]["attention"]["key"]
  assert key["lora_a"].shape == (2, 32, RANK) and key["lora_b"].shape == (2, RANK, 2 * 8)
  assert adapters["lm_head"]["lora_b"].shape == (RANK, CFG.vocab_size)
  assert _paths(adapters) | _paths(base) == _paths(params)
  assert not _paths(adapters) & _paths(base) and _paths(base) == _param_paths(CFG)
  assert all(lora.is_adapter(path) for path in _paths(adapters))
  assert not any(lora.is_adapter(path) for path in _paths(base))
  rejoined = merge_params(base, adapters)
  jax.tree.map(np.testing.assert_array_equal, rejoined, params)
  with pytest.raises(ValueError, match=r"merge_params: layers/attention/key/lora_a, .* in both parts"):
    merge_params(params, adapters)


def test_mixture_of_experts_takes_attention_adapters():
  config = _adapted("query,lm_head", num_experts=4)
  assert {path for path in _param_paths(config) if lora.is_adapter(path)} == {
      ("layers", "attention", "query", "lora_a"), ("layers", "attention", "query", "lora_b"),
      ("lm_head", "lora_a"), ("lm_head", "lora_b")}


@pytest.mark.parametrize("fields,message", [
    ({"lora_targets": "query,keys"}, r"model.lora_targets: 'keys' is not a projection; allowed: "
                                     r"query, key, value, out, wi_gate, wi_up, wo, lm_head"),
    ({"lora_targets": " , "}, r"model.lora_targets: is empty"),
    ({"lora_targets": "query,value,query"}, r"model.lora_targets: query named more than once"),
    ({"lora_rank": -1}, r"model.lora_rank: must be an integer >= 0 \(0: no adapters\), got -1"),
    ({"lora_alpha": 0.0}, r"model.lora_alpha: must be positive, got 0.0"),
    ({"lora_targets": "query,lm_head", "tie_embeddings": True},
     r"model.lora_targets: lm_head: with model.tie_embeddings"),
    ({"lora_targets": "query,wo", "num_experts": 4},
     r"model.lora_targets: wo: adapters on a mixture of experts' MLPs are not supported "
     r"\(model.num_experts=4\)"),
])
def test_bad_lora_fields_are_named(fields, message):
  dotted = {f"model.{name}": value for name, value in {"lora_rank": 8, **fields}.items()}
  with pytest.raises(ConfigError, match=message):
    lora.check_lora(tiny_config(**dotted).model)
  with pytest.raises(ConfigError, match=message):
    TransformerConfig.from_config(tiny_config(**dotted).model)


def test_config_fields_reach_the_model():
  config = tiny_config(**{"model.lora_rank": 2, "model.lora_targets": "query,key,value,out"})
  model_config = TransformerConfig.from_config(config.model)
  assert (model_config.lora_rank, model_config.lora_alpha) == (2, 16.0)
  adapted = {path[2] for path in _param_paths(model_config) if lora.is_adapter(path)}
  assert adapted == {"query", "key", "value", "out"}
  assert tiny_config().model.lora_rank == 0  # Off unless asked for.


@pytest.mark.parametrize("bits", [8, 4])
def test_qlora_equals_the_float_model_on_dequantized_weights_plus_adapters(bits):
  config = _adapted()
  params = _randomize_b(_init(config))
  adapters = lora.adapter_params(params)
  qbase = quant.quantize_params(lora.base_params(params), CFG, bits=bits, group_size=GROUP)
  qconfig = quant.quantized_config(config, bits, GROUP)
  qparams = merge_params(qbase, adapters)
  # The tree is exactly what the QLoRA model declares: codes and scales beside float adapters.
  assert _paths(qparams) == _param_paths(qconfig)
  assert set(qparams["layers"]["attention"]["query"]) == {"qweight", "scale", "lora_a", "lora_b"}
  qlora = _logits(qconfig, qparams, TOKENS)
  dequantized = quant.dequantize_params(qbase, quant.quantized_config(CFG, bits, GROUP))
  expected = _logits(config, merge_params(dequantized, adapters), TOKENS)
  np.testing.assert_allclose(qlora, expected, rtol=1e-5, atol=1e-5)
  without = _logits(quant.quantized_config(CFG, bits, GROUP), qbase, TOKENS)
  assert float(jnp.max(jnp.abs(qlora - without))) > 0.1
  with pytest.raises(ConfigError, match=rf"model.weight_bits: adapters over {bits}-bit weights "
                                        r"cannot be merged"):
    lora.merge_adapters(qparams, qconfig)


def test_gradients_reach_both_adapter_matrices():
  config = _adapted()
  params = _init(config)
  base = lora.base_params(params)
  targets = jnp.roll(TOKENS, -1, axis=1)

  def loss(adapters):
    logits = Transformer(config).apply({"params": merge_params(base, adapters)}, TOKENS)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

  def grad_norms(adapters):
    grads = jax.jit(jax.grad(loss))(adapters)
    assert _paths(grads) == _paths(adapters)  # Gradients for the adapters only.
    return {path: float(jnp.max(jnp.abs(g)))
            for path, g in zip(sorted(_paths(grads)), _sorted_leaves(grads))}

  # With B = 0, dL/dA = x^T (dL/dy) B^T is exactly zero and only B moves; once B is not zero, both.
  fresh = grad_norms(lora.adapter_params(params))
  assert all((norm == 0) == (path[-1] == "lora_a") for path, norm in fresh.items()), fresh
  trained = grad_norms(lora.adapter_params(_randomize_b(params)))
  assert len(trained) == 16 and all(norm > 0 for norm in trained.values()), trained


def _sorted_leaves(tree):
  by_path = {tuple(k.key for k in path): x for path, x in jax.tree_util.tree_leaves_with_path(tree)}
  return [by_path[path] for path in sorted(by_path)]
