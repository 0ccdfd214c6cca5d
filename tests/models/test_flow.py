"""Glow's layers and model: each inverts its forward and reports log |det| of its Jacobian (checked
against jax.jacfwd), the data-dependent init normalizes, sampling's temperature scales the prior,
and the dequantized likelihood bound is calibrated."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from gen_jax.models import flow as F
from gen_jax.objectives.flow import bin_width, dequantize, negative_log_likelihood

GLOW = F.FlowConfig(image_size=4, image_channels=2, levels=2, steps_per_level=2,
                    hidden_channels=8)


def _random_params(module, x, seed: int):
  """Params of `module` (initialized on x's shape) all drawn from N(0, 0.1^2) with numpy, so that
  zero-initialized couplings and priors do something and nothing random is compiled."""
  shapes = jax.eval_shape(lambda: _unboxed(module.init(jax.random.key(0), x,
                                                       method=module.forward)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), jnp.float32), shapes)


def _unboxed(variables):
  return jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x,
                      variables.get("params", {}), is_leaf=lambda x: hasattr(x, "unbox"))


def _check(forward, inverse, x, extra=lambda x: None):
  """Jitted (y, log_det [b], inverse(y), log |det| of d flatten(forward(x)) / d flatten(x) by
  jax.jacfwd, extra(x)); forward(x) -> (y, log_det) with y any pytree of arrays."""
  flat = lambda v: jnp.concatenate(  # noqa: E731
      [y.reshape(-1) for y in jax.tree.leaves(forward(v.reshape(x.shape))[0])])

  @jax.jit
  def run(x):
    y, log_det = forward(x)
    return y, log_det, inverse(y), jax.jacfwd(flat)(x.reshape(-1)), extra(x)

  y, log_det, back, jacobian, extra_value = run(x)
  assert jacobian.shape == (x.size, x.size)
  sign, jacobian_log_det = np.linalg.slogdet(np.asarray(jacobian, np.float64))
  assert sign != 0
  return y, log_det, back, jacobian_log_det, extra_value


def _numpy_squeeze(x):
  """Squeeze by its definition: out[b, i, j, (2 dy + dx) C + c] = x[b, 2i + dy, 2j + dx, c]."""
  b, h, w, c = x.shape
  out = np.zeros((b, h // 2, w // 2, 4 * c), x.dtype)
  for dy in range(2):
    for dx in range(2):
      out[..., (2 * dy + dx) * c:(2 * dy + dx + 1) * c] = x[:, dy::2, dx::2, :]
  return out


def test_every_layer_and_the_model_invert_with_the_jacobians_log_det():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 4, 2)), jnp.float32)  # D = 32
  layers = {"actnorm": F.ActNorm(), "invconv": F.InvConv1x1(seed=3),
            "coupling": F.AffineCoupling(hidden_channels=8, max_log_scale=2.0),
            "squeeze": F.Squeeze(), "split": F.Split(learned_prior=True)}
  for seed, (name, layer) in enumerate(layers.items()):
    params = _random_params(layer, x, seed)
    y, log_det, back, jacobian_log_det, _ = _check(
        lambda v, layer=layer, p=params: layer.apply({"params": p}, v, method=layer.forward),
        lambda v, layer=layer, p=params: layer.apply({"params": p}, v, method=layer.inverse), x)
    assert log_det.shape == (1,), name
    np.testing.assert_allclose(back, x, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(log_det[0], jacobian_log_det, atol=2e-4, err_msg=name)
    if name != "squeeze":  # Squeeze's is 0; the others must have moved away from the identity.
      assert abs(float(log_det[0])) > 0.05, name
  np.testing.assert_array_equal(F.squeeze(x), _numpy_squeeze(np.asarray(x)))

  net = F.Glow(GLOW)
  params = _random_params(net, x, 7)
  latents, log_det, back, jacobian_log_det, log_prob = _check(
      lambda v: net.apply({"params": params}, v, method=F.Glow.forward),
      lambda zs: net.apply({"params": params}, zs, method=F.Glow.inverse), x,
      lambda v: net.apply({"params": params}, v, method=F.Glow.log_prob))
  assert [z.shape[1:] for z in latents] == list(net.latent_shapes()) == [(2, 2, 4), (1, 1, 16)]
  np.testing.assert_allclose(back, x, atol=1e-5)
  np.testing.assert_allclose(log_det[0], jacobian_log_det, atol=5e-4)
  # log p(x) by the change of variables, with scipy's normal density of the latents.
  flat = np.concatenate([np.asarray(z, np.float64).reshape(-1) for z in latents])
  by_hand = scipy.stats.norm.logpdf(flat).sum() + jacobian_log_det
  np.testing.assert_allclose(log_prob[0], by_hand, rtol=1e-5)


def test_data_init_normalizes_the_first_batch_and_temperature_scales_sampled_latents():
  rng = np.random.default_rng(1)
  batch = np.asarray(rng.normal(size=(64, 4, 4, 2)) * [3.0, 0.5] + [2.0, -1.0], np.float32)
  net = F.Glow(dataclasses.replace(GLOW, steps_per_level=1))  # Fewer ops to compile.

  # rbg keys: the model takes any key, and threefry's programs take seconds to compile on CPU.
  key = jax.random.key(0, impl="rbg")

  # The init's own forward pass already runs with the data-initialized actnorms.
  (_, log_det), variables = jax.jit(lambda key: net.init_with_output(
      key, batch, data_init=True, method=F.Glow.forward))(key)
  params = _unboxed(variables)
  actnorm = params["steps_0"]["actnorm"]
  first = (_numpy_squeeze(batch) + np.asarray(actnorm["bias"])) * np.exp(actnorm["log_scale"])
  np.testing.assert_allclose(first.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(first.std(axis=(0, 1, 2)), 1.0, rtol=1e-4)
  # Fresh couplings and split priors are the identity and the 1x1 convs rotations (|det| = 1), so
  # the log-det is the actnorms' alone: positions x sum of log-scales, 2x2 then 1x1 positions.
  actnorm_log_det = sum(
      positions * float(np.sum(params[f"steps_{i}"]["actnorm"]["log_scale"]))
      for i, positions in enumerate([4, 1]))
  assert abs(actnorm_log_det) > 1
  np.testing.assert_allclose(log_det, actnorm_log_det, rtol=1e-5)
  # Without data actnorm starts as the identity.
  plain = F.ActNorm().init(key, batch)["params"]
  assert not np.any(plain["bias"].unbox()) and not np.any(plain["log_scale"].unbox())
  # Sampling at temperature T: the forward map recovers latents distributed as N(0, T^2). The
  # params are perturbed (on the host: random draws are slow to compile) so that couplings and
  # priors act.
  rng = np.random.default_rng(2)
  moved = jax.tree.map(lambda v: v + 0.1 * rng.normal(size=v.shape).astype(np.float32), params)

  @jax.jit
  def sample_latents(key):
    samples = net.apply({"params": moved}, key, 256, 0.5, method=F.Glow.sample)
    return samples, net.apply({"params": moved}, samples, method=F.Glow.forward)[0]

  samples, latents = sample_latents(key)
  assert samples.shape == (256, 4, 4, 2)
  for z in latents:
    z = np.asarray(z)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 0.5) < 0.03, (z.mean(), z.std())


def test_dequantization_stays_in_each_bin_and_a_uniform_density_scores_log2_levels():
  num_levels = 17
  levels = np.random.default_rng(3).integers(0, num_levels, size=(4, 8, 8, 1))
  images = (levels / (num_levels - 1) * 2 - 1).astype(np.float32)
  v = np.asarray(dequantize(jnp.asarray(images), jax.random.key(0, impl="rbg"), num_levels))
  width = bin_width(num_levels)
  assert np.abs(v - images).max() <= width / 2 and np.abs(v - images).max() > 0.45 * width
  np.testing.assert_array_equal(np.round((v + 1) / width), levels)
  # Uniform over the 17 bins, i.e. over [-1 - w/2, 1 + w/2] of length 17 w: density 1/(17 w).
  num_dims = 64
  log_density = jnp.full((4,), -num_dims * math.log(num_levels * width))
  terms = negative_log_likelihood(log_density, num_dims, num_levels)
  np.testing.assert_allclose(terms["bits_per_dim"], math.log2(num_levels), rtol=1e-6)
  np.testing.assert_allclose(terms["nats_per_image"], num_dims * math.log(num_levels), rtol=1e-6)
