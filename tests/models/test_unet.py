"""The diffusion U-Net: zero output at init, gradients reaching the input conv, conditioning wired,
padded context tokens ignored, and config validation naming its fields."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gen_jax.config.errors import ConfigError
from gen_jax.models.unet import UNet, UNetConfig, validate_unet

pytestmark = pytest.mark.xdist_group("unet")

FIELDS = dict(image_size=8, image_channels=1, dtype="float32", param_dtype="float32",
              num_classes=3, context_dim=6, base_channels=8, channel_multipliers=(1, 2),
              num_res_blocks=1, attention_resolutions=(4,), num_heads=2, num_groups=4, dropout=0.1,
              patch_size=2)  # patch_size: a DiT field, which the U-Net must not read.


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
  net = UNet(UNetConfig.from_config(_model_config()))
  rng = np.random.default_rng(0)
  inputs = dict(x=jnp.asarray(rng.normal(size=(3, 8, 8, 1)), jnp.float32),
                t=jnp.array([0.0, 17.5, 999.0]), labels=jnp.array([0, 1, 2], jnp.int32),
                context=jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32),
                context_mask=jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool))
  # The rbg key only makes the init compile fast on CPU (threefry's is slow); the values differ.
  params = _unbox(jax.jit(net.init)(jax.random.key(0, impl="unsafe_rbg"), **inputs)["params"])
  apply = jax.jit(lambda p, x, t, labels, context, context_mask: net.apply(
      {"params": p}, x, t, labels=labels, context=context, context_mask=context_mask))
  return net, params, inputs, apply


def test_output_is_zero_at_init_and_the_first_conv_reaches_it_once_trained(setup):
  net, params, inputs, apply = setup
  out = apply(params, **inputs)
  assert out.shape == (3, 8, 8, 1) and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), 0.0)  # The output conv starts at zero.

  def moved_along(p, name, eps=1e-2):
    """The change of the output when p[name]["kernel"] moves by eps (a finite difference)."""
    moved = dict(p, **{name: dict(p[name], kernel=p[name]["kernel"] + eps)})
    return np.abs(np.asarray(apply(moved, **inputs)) - np.asarray(apply(p, **inputs))).max()

  # At init the output conv already moves the output (training can start) ...
  assert moved_along(params, "conv_out") > 1e-4
  # ... but nothing before it does: the zero output conv blocks every other gradient at init.
  assert moved_along(params, "conv_in") == 0.0
  # Once it is nonzero, the signal flows back through every level from the input conv.
  params = dict(params, conv_out=_perturb(params["conv_out"], 1))
  assert moved_along(params, "conv_in") > 1e-4


def test_labels_and_context_condition_the_output_and_padding_is_ignored(setup):
  _, params, inputs, apply = setup
  params = _perturb(params, 2)
  base = np.asarray(apply(params, **inputs))
  assert np.abs(base).max() > 1e-3

  # A label changes its own example's output only; the null label (3) differs from a real one.
  for labels in ([2, 1, 2], [3, 1, 2]):
    out = np.asarray(apply(params, **dict(inputs, labels=jnp.array(labels, jnp.int32))))
    assert np.abs(out[0] - base[0]).max() > 1e-4, labels
    np.testing.assert_array_equal(out[1:], base[1:])

  # New values at padded context positions leave the output as it was ...
  mask = inputs["context_mask"]
  noise = 5.0 * np.random.default_rng(3).normal(size=inputs["context"].shape).astype(np.float32)
  padded_changed = jnp.where(mask[..., None], inputs["context"], noise)
  out = np.asarray(apply(params, **dict(inputs, context=padded_changed)))
  np.testing.assert_allclose(out, base, atol=1e-6)
  # ... while a change at a real position (example 2 has only position 0) changes it.
  changed = inputs["context"].at[2, 0].add(1.0)
  out = np.asarray(apply(params, **dict(inputs, context=changed)))
  assert np.abs(out[2] - base[2]).max() > 1e-4
  np.testing.assert_array_equal(out[:2], base[:2])


def test_validate_names_the_field_and_bad_arguments_are_named(setup):
  validate_unet(_model_config())
  for overrides, field in [
      (dict(attention_resolutions=(4, 3)), "model.attention_resolutions"),
      (dict(attention_resolutions=(2,)), "model.attention_resolutions"),  # Only 8 and 4 exist.
      (dict(image_size=6, channel_multipliers=(1, 2, 2)), "model.image_size"),
      (dict(num_groups=3), "model.num_groups"),
      (dict(num_heads=3), "model.num_heads"),
      (dict(dropout=1.0), "model.dropout"),
  ]:
    with pytest.raises(ConfigError, match=f"^{field}:") as error:
      validate_unet(_model_config(**overrides))
    assert error.value.field == field

  _, _, inputs, _ = setup
  plain = UNet(UNetConfig.from_config(_model_config(num_classes=0, context_dim=0)))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="^labels:"):
    jax.eval_shape(plain.init, key, inputs["x"], inputs["t"], labels=inputs["labels"])
  with pytest.raises(ValueError, match="^context:"):
    jax.eval_shape(plain.init, key, inputs["x"], inputs["t"], context=inputs["context"])
  shapes = jax.eval_shape(plain.init, key, inputs["x"], inputs["t"])["params"]
  assert "class_embed" not in shapes
