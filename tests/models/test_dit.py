"""The DiT and the shared diffusion layers: adaLN-Zero identity blocks and zero output at init,
patches folded back in place, conditioning wired, padded context ignored, numpy references for the
embeddings and the masked cross-attention, and config validation naming its fields."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gen_jax.config.errors import ConfigError
from gen_jax.models.diffusion_layers import MultiHeadAttention, sinusoidal_embedding
from gen_jax.models.dit import DiT, DiTBlock, DiTConfig, sincos_position_embedding, validate_dit

pytestmark = pytest.mark.xdist_group("dit")

FIELDS = dict(image_size=8, image_channels=2, dtype="float32", param_dtype="float32",
              num_classes=3, context_dim=6, patch_size=2, hidden_size=16, depth=2, num_heads=2,
              mlp_ratio=2.0, base_channels=8)  # base_channels: a U-Net field the DiT must not read.


def _model_config(**overrides):
  return ml_collections.ConfigDict({**FIELDS, **overrides})


def _unbox(tree):
  return jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, tree,
                      is_leaf=lambda x: hasattr(x, "unbox"))


def _perturb(params, seed, scale=0.1):
  """The params plus noise on every leaf, zero-initialized ones included (as after training)."""
  rng = np.random.default_rng(seed)  # numpy: eager jax.random would compile once per shape.
  return jax.tree.map(lambda x: np.asarray(x) + scale * rng.normal(size=x.shape).astype(np.float32),
                      params)


@pytest.fixture(scope="module")
def setup():
  net = DiT(DiTConfig.from_config(_model_config()))
  rng = np.random.default_rng(0)
  inputs = dict(x=rng.normal(size=(3, 8, 8, 2)).astype(np.float32),
                t=np.array([0.0, 17.5, 999.0], np.float32), labels=np.array([0, 1, 2], np.int32),
                context=rng.normal(size=(3, 5, 6)).astype(np.float32),
                context_mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool))
  # The rbg key only makes the init compile fast on CPU (threefry's is slow); the values differ.
  params = _unbox(jax.jit(net.init)(jax.random.key(0, impl="unsafe_rbg"), **inputs)["params"])
  apply = jax.jit(lambda p, x, t, labels, context, context_mask: net.apply(
      {"params": p}, x, t, labels=labels, context=context, context_mask=context_mask))
  return net, params, inputs, apply


def test_blocks_are_the_identity_and_the_output_zero_at_init(setup):
  net, params, inputs, apply = setup
  out = apply(params, **inputs)
  assert out.shape == (3, 8, 8, 2) and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), 0.0)

  rng = np.random.default_rng(1)
  tokens = rng.normal(size=(3, 16, 16)).astype(np.float32)  # [b, t, d]
  cond = rng.normal(size=(3, 16)).astype(np.float32)
  block = DiTBlock(num_heads=2, mlp_dim=32, dtype=jnp.float32, param_dtype=jnp.float32)
  apply_block = jax.jit(lambda p: block.apply({"params": p}, tokens, cond, inputs["context"],
                                              inputs["context_mask"]))
  for name in ("block_0", "block_1"):
    np.testing.assert_array_equal(np.asarray(apply_block(params[name])), tokens)
    # Not trivially: with the adaLN regression moved off zero the block changes its input.
    moved = dict(params[name], adaln=_perturb(params[name]["adaln"], 2))
    assert np.abs(np.asarray(apply_block(moved)) - tokens).max() > 1e-3


def test_each_patch_is_folded_back_in_place(setup):
  """Blocks and adaLN at init, only the final linear moved: every output patch is a function of
  its own input patch, so one changed pixel changes exactly its 2x2 patch of the output."""
  _, params, inputs, apply = setup
  params = dict(params, final_linear=_perturb(params["final_linear"], 3))
  base = np.asarray(apply(params, **inputs))
  x = inputs["x"].copy()
  x[1, 3, 4, 0] += 1.0  # Row 3, column 4: the patch of rows 2-3, columns 4-5.
  changed = np.abs(np.asarray(apply(params, **dict(inputs, x=x))) - base).max(axis=-1)
  expected = np.zeros((3, 8, 8), bool)
  expected[1, 2:4, 4:6] = True
  np.testing.assert_array_equal(changed > 1e-5, expected)


def test_labels_and_context_condition_the_output_and_padding_is_ignored(setup):
  net, params, inputs, apply = setup
  params = _perturb(params, 4)
  base = np.asarray(apply(params, **inputs))
  assert np.abs(base).max() > 1e-3

  # A label changes its own example's output only; the null label (3) differs from a real one.
  for labels in ([2, 1, 2], [3, 1, 2]):
    out = np.asarray(apply(params, **dict(inputs, labels=np.array(labels, np.int32))))
    assert np.abs(out[0] - base[0]).max() > 1e-4, labels
    np.testing.assert_array_equal(out[1:], base[1:])

  # New values at padded context positions leave the output as it was ...
  mask = inputs["context_mask"]
  noise = 5.0 * np.random.default_rng(5).normal(size=inputs["context"].shape).astype(np.float32)
  out = np.asarray(apply(params, **dict(inputs, context=np.where(mask[..., None],
                                                                  inputs["context"], noise))))
  np.testing.assert_allclose(out, base, atol=1e-6)
  # ... while a change at a real position (example 2 has only position 0) changes it.
  context = inputs["context"].copy()
  context[2, 0] += 1.0
  out = np.asarray(apply(params, **dict(inputs, context=context)))
  assert np.abs(out[2] - base[2]).max() > 1e-4
  np.testing.assert_array_equal(out[:2], base[:2])
  # No context at all is an all-padding context; no labels is the null class.
  all_padding = dict(inputs, context_mask=np.zeros_like(mask), labels=np.full(3, 3, np.int32))
  out = jax.jit(lambda p, x, t: net.apply({"params": p}, x, t))(params, inputs["x"], inputs["t"])
  np.testing.assert_allclose(np.asarray(out), np.asarray(apply(params, **all_padding)), atol=1e-5)


def test_embeddings_and_masked_cross_attention_match_numpy():
  t = np.array([0.0, 1.0, 2.5, 999.0], np.float32)
  half = np.arange(4) / 4
  args = t[:, None] * 10_000.0 ** -half[None]
  embed = jax.jit(sinusoidal_embedding, static_argnums=1)  # Jitted: one compile, not one per op.
  np.testing.assert_allclose(np.asarray(embed(t, 8)),
                             np.concatenate([np.cos(args), np.sin(args)], 1), atol=2e-5)

  # DiT's get_2d_sincos_pos_embed: meshgrid(w, h); the first half of the width from the column.
  emb = sincos_position_embedding(8, 3)
  for index in range(9):
    row, col = divmod(index, 3)
    omega = 1.0 / 10_000 ** (np.arange(2) / 2.0)
    expected = np.concatenate([np.sin(col * omega), np.cos(col * omega),
                               np.sin(row * omega), np.cos(row * omega)])
    np.testing.assert_allclose(emb[index], expected, atol=1e-6)

  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 3, 8)).astype(np.float32)  # [b, t, d]
  context = rng.normal(size=(2, 4, 5)).astype(np.float32)  # [b, s, c]
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  layer = MultiHeadAttention(num_heads=2)
  params = jax.eval_shape(layer.init, jax.random.key(0), x, context, mask)["params"]
  params = _perturb(jax.tree.map(lambda x: np.zeros(x.shape, np.float32), _unbox(params)), 7, 0.5)
  out = np.asarray(jax.jit(layer.apply)({"params": params}, x, context, mask))
  q = np.einsum("btd,dnh->btnh", x, params["query_kernel"]) + params["query_bias"]
  kv = np.einsum("bsc,cjnh->bsjnh", context, params["kv_kernel"]) + params["kv_bias"]
  logits = np.einsum("btnh,bsnh->bnts", q, kv[:, :, 0]) / np.sqrt(4.0)
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  heads = np.einsum("bnts,bsnh->btnh", weights, kv[:, :, 1])
  expected = np.einsum("btnh,nhd->btd", heads, params["out_kernel"]) + params["out_bias"]
  np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)


def test_validate_names_the_field_and_bad_arguments_are_named(setup):
  validate_dit(_model_config())
  for overrides, field in [
      (dict(image_size=10, patch_size=4), "model.patch_size"),
      (dict(num_heads=3), "model.num_heads"),
      (dict(hidden_size=18, num_heads=2), "model.hidden_size"),
      (dict(depth=0), "model.depth"),
  ]:
    with pytest.raises(ConfigError, match=f"^{field}:") as error:
      validate_dit(_model_config(**overrides))
    assert error.value.field == field

  _, _, inputs, _ = setup
  plain = DiT(DiTConfig.from_config(_model_config(num_classes=0, context_dim=0)))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="^labels:"):
    jax.eval_shape(plain.init, key, inputs["x"], inputs["t"], labels=inputs["labels"])
  with pytest.raises(ValueError, match="^context:"):
    jax.eval_shape(plain.init, key, inputs["x"], inputs["t"], context=inputs["context"])
  with pytest.raises(ValueError, match="^x:"):
    jax.eval_shape(plain.init, key, inputs["x"][:, :4], inputs["t"])
  shapes = jax.eval_shape(plain.init, key, inputs["x"], inputs["t"])["params"]
  assert "class_embed" not in shapes and "cross_attn" not in shapes["block_0"]
