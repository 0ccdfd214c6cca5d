"""GAN losses (Goodfellow et al., 2014; Lim & Ye, 2017) and the R1 penalty (Mescheder et al., 2018).

All are per example, from discriminator logits (real-valued scores; D(x) = sigmoid(logit) is the
non-saturating loss's probability that x is real):

  non_saturating  D: softplus(-D(real)) + softplus(D(fake))   (binary cross-entropy)
                  G: softplus(-D(fake))                        (-log sigmoid: Goodfellow's
                                                               non-saturating generator loss)
  hinge           D: relu(1 - D(real)) + relu(1 + D(fake))
                  G: -D(fake)
"""
from typing import Callable

import jax
import jax.numpy as jnp

GAN_LOSSES = ("non_saturating", "hinge")


def _check(loss_type: str) -> None:
  if loss_type not in GAN_LOSSES:
    raise ValueError(f"unknown GAN loss {loss_type!r}; losses are {GAN_LOSSES}")


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, loss_type: str
                       ) -> jax.Array:
  """real_logits, fake_logits [b] -> the discriminator's loss per example [b]."""
  _check(loss_type)
  real, fake = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
  if loss_type == "hinge":
    return jax.nn.relu(1.0 - real) + jax.nn.relu(1.0 + fake)
  return jax.nn.softplus(-real) + jax.nn.softplus(fake)


def generator_loss(fake_logits: jax.Array, loss_type: str) -> jax.Array:
  """fake_logits [b] -> the generator's loss per example [b]."""
  _check(loss_type)
  fake = fake_logits.astype(jnp.float32)
  if loss_type == "hinge":
    return -fake
  return jax.nn.softplus(-fake)


def r1_penalty(discriminator_fn: Callable[[jax.Array], jax.Array], real_images: jax.Array
               ) -> jax.Array:
  """||d D(x) / d x||^2 on real images, per example: [b, H, W, C] -> [b].

  `discriminator_fn` maps images [b, H, W, C] to logits [b] and must treat every example on its
  own (no batch statistics), so the gradient of the summed logits holds each example's own
  gradient. Mescheder et al. add gamma / 2 times this to the discriminator's loss.
  """
  grads = jax.grad(lambda x: discriminator_fn(x).astype(jnp.float32).sum())(real_images)
  return jnp.sum(grads.reshape(grads.shape[0], -1).astype(jnp.float32) ** 2, axis=-1)
