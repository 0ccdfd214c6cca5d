"""GAN losses against hand-computed values; R1 against closed forms and per-example jacfwd."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.objectives.gan import discriminator_loss, generator_loss, r1_penalty


def _softplus(x):
  return np.log1p(np.exp(x))


def test_losses_equal_hand_computed_values():
  real = jnp.asarray([2.0, -1.0, 100.0])
  fake = jnp.asarray([0.5, -3.0, -100.0])
  # Hinge: relu(1 - r) + relu(1 + f) = [0 + 1.5, 2 + 0, 0 + 0]; G: -f.
  np.testing.assert_allclose(discriminator_loss(real, fake, "hinge"), [1.5, 2.0, 0.0])
  np.testing.assert_allclose(generator_loss(fake, "hinge"), [-0.5, 3.0, 100.0])
  # Non-saturating: binary cross-entropy -log sigmoid(r) - log(1 - sigmoid(f)); G: -log sigmoid(f).
  np.testing.assert_allclose(discriminator_loss(real[:2], fake[:2], "non_saturating"),
                             [_softplus(-2.0) + _softplus(0.5), _softplus(1.0) + _softplus(-3.0)],
                             rtol=1e-6)
  sigmoid = 1 / (1 + np.exp(-np.array([0.5, -3.0])))
  np.testing.assert_allclose(generator_loss(fake[:2], "non_saturating"), -np.log(sigmoid),
                             rtol=1e-6)
  # Stable at saturated logits: a sure, right discriminator costs ~0, a fooled generator ~100.
  np.testing.assert_allclose(discriminator_loss(real[2:], fake[2:], "non_saturating"), [0.0],
                             atol=1e-30)
  np.testing.assert_allclose(generator_loss(fake[2:], "non_saturating"), [100.0], rtol=1e-6)
  with pytest.raises(ValueError,
                     match=r"unknown GAN loss 'wgan'; losses are \('non_saturating', 'hinge'\)"):
    generator_loss(fake, "wgan")


def test_r1_of_a_linear_discriminator_is_the_squared_weight_norm():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((4, 4, 3)).astype(np.float32)
  images = jnp.asarray(rng.standard_normal((5, 4, 4, 3)), jnp.float32)
  penalty = r1_penalty(lambda x: jnp.einsum("bhwc,hwc->b", x, w), images)
  np.testing.assert_allclose(penalty, np.full(5, (w ** 2).sum()), rtol=1e-5)


def test_r1_is_each_examples_own_gradient_norm():
  """A non-linear discriminator: the penalty of each row equals its own jacfwd gradient's norm."""
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.standard_normal((3, 3, 1, 2)), jnp.float32)
  images = jnp.asarray(rng.standard_normal((4, 3, 3, 1)), jnp.float32)

  def one(x):  # [H, W, C] -> a scalar logit
    return jnp.sum(jnp.tanh(jnp.einsum("hwc,hwcf->f", x, a)) ** 2) + jnp.sum(x ** 3)

  penalty = r1_penalty(jax.vmap(one), images)
  expected = jnp.sum(jax.vmap(jax.jacfwd(one))(images) ** 2, axis=(1, 2, 3))  # [b, H, W, C]
  np.testing.assert_allclose(penalty, expected, rtol=1e-5)
