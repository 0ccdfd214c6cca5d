"""The quantized Transformer: its logits are the float model's on the dequantized weights (so the
fused path computes what it claims), greedy decoding through gen_jax.sampling matches too, GPTQ
lowers each projection's output error on its calibration data, the param tree holds int8 codes
(int4 at half the bytes) with embeddings, norms and lm_head left float, and the compiled forward
pass never holds a float copy of the stacked weights."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import quant
from gen_jax.config import ConfigError
from gen_jax.models import Transformer, TransformerConfig
from gen_jax.sampling import SamplingParams, generate_batch
from tests.conftest import tiny_config

CFG = TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, max_seq_len=32)
GROUP = 16


@pytest.fixture(scope="module")
def float_params():
  init = jax.jit(Transformer(CFG).init)
  return nn.meta.unbox(init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])


@pytest.fixture(scope="module")
def calibration():
  return np.asarray(jax.random.randint(jax.random.key(1), (4, 32), 0, CFG.vocab_size))


def _quantized(float_params, calibration, bits, method):
  params = quant.quantize_params(float_params, CFG, bits=bits, group_size=GROUP, method=method,
                                 calibration=calibration if method == "gptq" else None)
  return quant.quantized_config(CFG, bits, GROUP), params


def _logits(config, params, tokens):
  return jax.jit(Transformer(config).apply)({"params": params}, tokens)


@pytest.mark.parametrize("bits,method", [(8, "rtn"), (4, "rtn"), (4, "gptq")])
def test_logits_equal_the_float_model_on_dequantized_weights(float_params, calibration, bits,
                                                             method):
  config, params = _quantized(float_params, calibration, bits, method)
  tokens = jax.random.randint(jax.random.key(2), (2, 24), 0, CFG.vocab_size)
  quantized = _logits(config, params, tokens)
  dequantized = _logits(CFG, quant.dequantize_params(params, config), tokens)
  np.testing.assert_allclose(quantized, dequantized, rtol=1e-5, atol=1e-5)
  original = _logits(CFG, float_params, tokens)
  error = float(jnp.max(jnp.abs(quantized - original)) / jnp.max(jnp.abs(original)))
  assert 0 < error < (0.06 if bits == 8 else 0.8), error  # Really quantized, and not broken.


@pytest.mark.parametrize("bits", [8, 4])
def test_a_mixture_of_experts_quantizes_its_experts_by_rounding(calibration, bits):
  """Expert stacks [e, in, out] become int codes per expert (round to nearest): the logits of a
  prefill through the slots and of decoding rows through their chosen experts' int weights equal
  the float model's on the dequantized weights; GPTQ, which calibrates on projections' recorded
  inputs, is refused."""
  moe = dataclasses.replace(CFG, num_experts=8, experts_per_token=2, expert_capacity_factor=0.0)
  init = jax.jit(Transformer(moe).init)
  float_params = nn.meta.unbox(init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  params = quant.quantize_params(float_params, moe, bits=bits, group_size=GROUP)
  config = quant.quantized_config(moe, bits, GROUP)
  experts = params["layers"]["mlp"]["wi_gate"]
  assert experts["qweight"].dtype == jnp.int8 and experts["qweight"].shape == (
      CFG.num_layers, 8, CFG.embed_dim // GROUP, GROUP if bits == 8 else GROUP // 2, CFG.mlp_dim)
  dequantized = quant.dequantize_params(params, config)
  for tokens in (jax.random.randint(jax.random.key(2), (2, 24), 0, CFG.vocab_size),
                 jnp.asarray([[5], [9]])):  # 2 rows x 2 choices < 8 experts: _chosen_experts.
    quantized = _logits(config, params, tokens)
    np.testing.assert_allclose(quantized, _logits(moe, dequantized, tokens), rtol=1e-5,
                               atol=1e-5)
    original = _logits(moe, float_params, tokens)
    # The median: a token whose top-2 experts nearly tie can flip to another expert, which moves
    # its logits by more than rounding does (0.15 of the largest logit here at int8).
    error = float(jnp.median(jnp.abs(quantized - original)) / jnp.max(jnp.abs(original)))
    assert 0 < error < (0.01 if bits == 8 else 0.2), error  # Really quantized, and not broken.
  with pytest.raises(ValueError, match="method: 'gptq' calibrates .* use method='rtn'"):
    quant.quantize_params(float_params, moe, bits=bits, group_size=GROUP, method="gptq",
                          calibration=calibration)


def test_gptq_lowers_every_projections_output_error_on_the_calibration_data(float_params,
                                                                            calibration):
  """tr(dW^T X^T X dW) = ||X dW||^2 per projection and layer, X that projection's own recorded
  input: checks that each projection got its own Hessian, not just that GPTQ works."""
  grams = quant.collect_input_grams(CFG, float_params, calibration)["layers"]
  assert set(grams) == {"attention", "mlp"} and len(grams["attention"]) == 4
  config, rtn = _quantized(float_params, calibration, 4, "rtn")
  _, gptq = _quantized(float_params, calibration, 4, "gptq")
  rtn, gptq = quant.dequantize_params(rtn, config), quant.dequantize_params(gptq, config)
  for block, projections in grams.items():
    for name, stats in projections.items():
      gram = stats["input_gram"]  # [layers, in, in]
      def output_error(params):
        kernel = params["layers"][block][name]["kernel"]
        delta = (kernel - float_params["layers"][block][name]["kernel"]).reshape(
            *gram.shape[:2], -1)  # [layers, in, out]
        return jnp.einsum("lio,lij,ljo->l", delta, gram, delta)
      assert jnp.all(output_error(gptq) < 0.8 * output_error(rtn)), (block, name)


def test_param_tree_layout_and_bytes(float_params):
  trees = {bits: quant.quantize_params(float_params, CFG, bits=bits, group_size=GROUP)
           for bits in (8, 4)}
  for bits, params in trees.items():
    query = params["layers"]["attention"]["query"]
    assert set(query) == {"qweight", "scale"} and query["qweight"].dtype == jnp.int8
    # [layers, in / group, group (half for int4), out]; in = embed_dim, out = heads * head_dim.
    assert query["qweight"].shape == (2, 32 // GROUP, GROUP // (8 // bits), 32)
    assert query["scale"].shape == (2, 32 // GROUP, 32)
    assert params["layers"]["attention"]["out"]["qweight"].shape == (2, 2, GROUP * bits // 8, 32)
    np.testing.assert_array_equal(params["embed"]["embedding"], float_params["embed"]["embedding"])
    np.testing.assert_array_equal(params["lm_head"]["kernel"], float_params["lm_head"]["kernel"])
  def codes(tree):
    return sum(x.nbytes for x in jax.tree.leaves(tree) if x.dtype == jnp.int8)
  projection_weights = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(float_params)
                           if "layers" in jax.tree_util.keystr(path) and x.ndim > 2)
  assert codes(trees[8]) == projection_weights and codes(trees[4]) == projection_weights // 2


def test_greedy_decoding_equals_the_float_model_on_dequantized_weights(float_params, calibration):
  config, params = _quantized(float_params, calibration, 4, "gptq")
  prompts = [[3, 7, 11, 2], [5]]
  def decode(config, params):
    return generate_batch(Transformer(config), params, prompts, max_new_tokens=10,
                          sampling=SamplingParams(temperature=0.0), rng=jax.random.key(0),
                          eos_id=-1, max_seq_len=CFG.max_seq_len)
  quantized = decode(config, params)
  assert quantized == decode(CFG, quant.dequantize_params(params, config))
  assert [len(row) for row in quantized] == [10, 10]


@pytest.mark.parametrize("bits", [8, 4])
def test_pallas_matmul_gives_the_xla_paths_logits_and_greedy_tokens(float_params, bits):
  """model.weight_matmul_impl='pallas' (the kernel interpreted on a CPU) in every projection of
  the prefill and of each decoding step, against the XLA path. Groups of 32: int4 stores 16 rows
  per group, the kernel's smallest tile."""
  params = quant.quantize_params(float_params, CFG, bits=bits, group_size=32)
  xla = quant.quantized_config(CFG, bits, 32)
  pallas = dataclasses.replace(xla, weight_matmul_impl="pallas")
  tokens = jax.random.randint(jax.random.key(3), (2, 12), 0, CFG.vocab_size)
  np.testing.assert_allclose(_logits(pallas, params, tokens), _logits(xla, params, tokens),
                             rtol=1e-5, atol=1e-5)
  prompts = [[3, 7, 11, 2], [5]]
  def decode(config):
    return generate_batch(Transformer(config), params, prompts, max_new_tokens=6,
                          sampling=SamplingParams(temperature=0.0), rng=jax.random.key(0),
                          eos_id=-1, max_seq_len=CFG.max_seq_len)
  assert decode(pallas) == decode(xla)


def test_compiled_forward_never_holds_the_stacked_weights_in_float():
  """Each layer's codes are dequantized inside the layer loop, from the int8 stack: the HLO has no
  float array of the stacked shape of any projection, only one layer's [in, out] at a time."""
  config = dataclasses.replace(CFG, embed_dim=96, mlp_dim=160, weight_bits=4,
                               weight_group_size=GROUP)
  model = Transformer(config)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                        jnp.zeros((1, 4), jnp.int32))["params"])
  hlo = jax.jit(lambda p, t: model.apply({"params": p}, t)).lower(
      shapes, jax.ShapeDtypeStruct((1, 8), jnp.int32)).compile().as_text()
  for in_size, out_size in ((96, 32), (96, 160), (160, 96)):
    stacked = (2, in_size // GROUP, GROUP, out_size)
    for shape in (stacked, (2, in_size, out_size), (2 * in_size, out_size)):
      assert f"f32[{','.join(map(str, shape))}]" not in hlo
    assert f"f32[{in_size},{out_size}]" in hlo  # One layer's dequantized kernel, in the loop.


def test_quantize_params_errors_name_the_argument(float_params):
  with pytest.raises(ValueError, match=r"method: 'nf4' is not one of \('rtn', 'gptq', 'awq'\)"):
    quant.quantize_params(float_params, CFG, bits=4, group_size=GROUP, method="nf4")
  for method in ("gptq", "awq"):
    with pytest.raises(ValueError, match=f"calibration: {method} needs calibration tokens"):
      quant.quantize_params(float_params, CFG, bits=4, group_size=GROUP, method=method)
  with pytest.raises(ValueError, match=r"bits: 2 is not one of \(8, 4\)"):
    quant.quantize_params(float_params, CFG, bits=2, group_size=GROUP)
  with pytest.raises(ConfigError, match=r"model.weight_group_size: 24 does not divide the input "
                                        r"size 32 \(model.embed_dim\)"):
    quant.quantize_params(float_params, CFG, bits=8, group_size=24)
  flat = {**float_params, "final_norm": jnp.ones(32)}
  with pytest.raises(ValueError, match=r"params: final_norm is an array; the config's param tree "
                                       r"has a subtree"):
    quant.quantize_params(flat, CFG, bits=8, group_size=GROUP)
  broken = {**float_params, "final_norm": {"scale": jnp.ones(7)}}
  with pytest.raises(ValueError, match=r"params: final_norm/scale has shape \(7,\); the config "
                                       r"expects \(32,\)"):
    quant.quantize_params(broken, CFG, bits=8, group_size=GROUP)


def test_config_fields_reach_the_model_and_are_checked():
  config = tiny_config(**{"model.weight_bits": 8, "model.weight_group_size": 16})
  assert TransformerConfig.from_config(config.model).weight_bits == 8
  quant.check_weight_quantization(config.model)
  config = tiny_config(**{"model.weight_bits": 5})
  with pytest.raises(ConfigError, match=r"model.weight_bits: 5 is not one of \(0, 8, 4\)"):
    TransformerConfig.from_config(config.model)
