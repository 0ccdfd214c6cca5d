"""The VQ-VAE's quantizer, objective and EMA codebook, and the code prior's output mask, against
numpy formulas and jax.grad."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.models.transformer import Transformer, TransformerConfig
from gen_jax.models.vqvae import (NEG_INF, VQVAE, CodePrior, VQVAEConfig, nearest_codes,
                                  straight_through)
from gen_jax.objectives import vqvae as vq

RNG = np.random.default_rng(0)


def _random_params(module: nn.Module, *inputs) -> dict:
  """Params of the module's shapes drawn in numpy: no init to compile (its RNG is slow to)."""
  shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs))["params"]
  return jax.tree.map(lambda s: jnp.asarray(RNG.normal(0, 0.3, s.shape), s.dtype), shapes)


def _tiny_vqvae():
  net = VQVAE(VQVAEConfig(image_size=8, image_channels=1, channels=(8,), num_res_blocks=0,
                          num_codes=6, code_dim=4))
  levels = np.linspace(-1, 1, 17)
  images = jnp.asarray(levels[RNG.integers(0, 17, (3, 8, 8, 1))], jnp.float32)
  return net, _random_params(net, images), images


def test_straight_through_gradient_and_the_loss_never_differentiates_the_codebook():
  net, params, images = _tiny_vqvae()

  def recon(z):  # The reconstruction term as a function of the decoder's input.
    decoded = net.apply({"params": params}, z, method=VQVAE.decode)
    return vq.vqvae_loss(images, decoded, z, z, 17, 0.0)["reconstruction"].sum()

  def loss(p):
    o = net.apply({"params": p}, images)
    return vq.vqvae_loss(images, o["decoded"], o["z_e"], o["z_q"], 17, 0.25)["loss"].sum()

  @jax.jit  # One compilation for every check.
  def run(params):
    out = net.apply({"params": params}, images)
    z_e, z_q = out["z_e"], out["z_q"]
    through = jax.value_and_grad(lambda z: recon(straight_through(z, z_q)))(z_e)
    direct = jax.value_and_grad(recon)(z_q)
    d_commit = jax.grad(lambda z: vq.vqvae_loss(images, out["decoded"], z, z_q, 17, 0.25)
                        ["loss"].sum())(z_e)
    return out, through, direct, jax.grad(loss)(params), d_commit

  out, (value, d_z_e), (expected_value, d_z_q), grads, d_commit = run(params)
  z_e, z_q = out["z_e"], out["z_q"]
  assert z_e.shape == z_q.shape == (3, 4, 4, 4) and out["codes"].shape == (3, 4, 4)
  np.testing.assert_array_equal(z_q, params["quantizer"]["codebook"][out["codes"]])
  # z_e + (z_q - z_e) rounds to z_q within float32's precision.
  np.testing.assert_allclose(value, expected_value, rtol=1e-5)  # The forward pass reads z_q.
  # d loss/d z_e = d loss/d z_q (up to that rounding).
  np.testing.assert_allclose(d_z_e, d_z_q, rtol=1e-3, atol=1e-3 * np.abs(d_z_q).max())
  assert np.abs(d_z_q).max() > 0
  for leaf in ("codebook", "cluster_size", "embed_sum"):
    np.testing.assert_array_equal(grads["quantizer"][leaf], 0.0)
  assert np.abs(grads["encoder"]["Conv_0"]["kernel"]).max() > 0
  # The commitment term alone pulls z_e toward z_q: its gradient is 2 beta (z_e - z_q).
  np.testing.assert_allclose(d_commit, 0.5 * (z_e - z_q), rtol=1e-5, atol=1e-6)


def test_nearest_codes_matches_a_brute_force_argmin():
  vectors, codebook = RNG.normal(size=(5, 7, 3)), RNG.normal(size=(11, 3))
  distances = ((vectors[:, :, None, :] - codebook[None, None]) ** 2).sum(-1)
  np.testing.assert_array_equal(nearest_codes(jnp.asarray(vectors), jnp.asarray(codebook)),
                                distances.argmin(-1))


def test_ema_update_matches_its_formula_in_numpy():
  num_codes, dim, n, decay, eps = 5, 3, 40, 0.9, 1e-3
  cluster_size = RNG.uniform(0.5, 3, num_codes)
  embed_sum = RNG.normal(size=(num_codes, dim))
  vectors = RNG.normal(size=(n, dim))
  codes = RNG.integers(0, num_codes - 1, n)  # The last code gets nothing: its size only decays.
  weights = (RNG.uniform(size=n) > 0.2).astype(np.float64)  # Padding rows count for nothing.
  new_size, new_sum, codebook = vq.ema_codebook_update(
      jnp.asarray(cluster_size, jnp.float32), jnp.asarray(embed_sum, jnp.float32),
      jnp.asarray(vectors, jnp.float32), jnp.asarray(codes), jnp.asarray(weights, jnp.float32),
      decay, eps)
  want_size, want_sum = decay * cluster_size, decay * embed_sum
  for vector, code, weight in zip(vectors, codes, weights):
    want_size[code] += (1 - decay) * weight
    want_sum[code] += (1 - decay) * weight * vector
  total = want_size.sum()
  want_codebook = want_sum / ((want_size + eps) / (total + num_codes * eps) * total)[:, None]
  np.testing.assert_allclose(new_size, want_size, rtol=1e-5)
  np.testing.assert_allclose(new_sum, want_sum, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(codebook, want_codebook, rtol=1e-5, atol=1e-6)


def test_perplexity_is_exp_entropy_of_code_usage():
  num_codes = 8
  uniform = jnp.asarray(np.tile(np.arange(num_codes), 5))
  np.testing.assert_allclose(vq.code_perplexity(uniform, num_codes), num_codes, rtol=1e-6)
  np.testing.assert_allclose(vq.code_perplexity(jnp.full((9,), 3), num_codes), 1.0, rtol=1e-6)
  codes = RNG.integers(0, num_codes, 50)
  weights = (RNG.uniform(size=50) > 0.3).astype(np.float32)
  p = np.bincount(codes, weights, minlength=num_codes)
  p = p / p.sum()
  want = np.exp(-sum(q * np.log(q) for q in p if q > 0))
  np.testing.assert_allclose(vq.code_perplexity(jnp.asarray(codes), num_codes,
                                                jnp.asarray(weights)), want, rtol=1e-5)


def test_dead_codes_restart_on_distinct_counted_batch_vectors():
  num_codes, dim, n = 6, 3, 20
  codebook, embed_sum = RNG.normal(size=(num_codes, dim)), RNG.normal(size=(num_codes, dim))
  cluster_size = np.array([0.2, 5.0, 0.99, 1.0, 3.0, 0.0])
  vectors = RNG.normal(size=(n, dim))
  weights = np.ones(n)
  weights[:10] = 0  # Padding rows are never drawn.
  args = [jnp.asarray(x, jnp.float32) for x in (codebook, cluster_size, embed_sum, vectors,
                                                 weights)]
  new_codebook, new_size, new_sum, restarted = vq.restart_dead_codes(
      *args[:3], args[3], args[4], 1.0, jax.random.key(0))
  dead = cluster_size < 1.0
  assert restarted == dead.sum() == 3
  np.testing.assert_allclose(new_codebook[~dead], codebook[~dead], rtol=1e-6)
  np.testing.assert_allclose(new_sum[~dead], embed_sum[~dead], rtol=1e-6)
  np.testing.assert_allclose(new_size, np.where(dead, 1.0, cluster_size), rtol=1e-6)
  np.testing.assert_allclose(new_sum[dead], new_codebook[dead])
  rows = [int(np.argmin(((vectors - v) ** 2).sum(-1))) for v in np.asarray(new_codebook[dead])]
  np.testing.assert_allclose(new_codebook[dead], vectors[rows], rtol=1e-6)
  assert len(set(rows)) == 3 and min(rows) >= 10
  _, _, _, none = vq.restart_dead_codes(*args, 0.0, jax.random.key(0))
  assert none == 0


def test_code_prior_restricts_each_position_to_what_can_follow_it():
  num_codes, num_classes = 5, 3
  config = TransformerConfig(vocab_size=num_codes + num_classes + 1, embed_dim=16, num_layers=1,
                             num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32, max_seq_len=6)
  prior = CodePrior(config, num_codes, num_classes)
  tokens = jnp.asarray([[8, 6, 0, 4, 2], [8, 5, 3, 3, 1]])  # start, class, codes.
  params = _random_params(prior, tokens)
  logits = jax.jit(prior.apply)({"params": params}, tokens)
  raw = jax.jit(Transformer(config).apply)({"params": params["transformer"]}, tokens)
  allowed = np.zeros((5, 9), bool)
  allowed[0, 5:8] = True  # After the start token: a class.
  allowed[1:, :5] = True  # After the class and every code: a code.
  allowed = np.broadcast_to(allowed, logits.shape)
  np.testing.assert_allclose(logits[allowed], raw[allowed], rtol=1e-6)
  assert np.all(np.asarray(logits)[~allowed] == NEG_INF)
  unconditional = CodePrior(config, num_codes, 0)
  logits = jax.jit(unconditional.apply)({"params": params}, tokens)
  assert np.all(np.asarray(logits)[..., 5:] == NEG_INF) and np.all(logits[..., :5] > NEG_INF)
