"""The VQ-VAE's objective (van den Oord et al., 2017) and its EMA codebook (Razavi et al., 2019),
with dead-code restarts (Dhariwal et al., 2020, "Jukebox").

Training minimizes reconstruction + beta * commitment per image: the discretized-logistic NLL of
the pixels given the quantized latents, and ||z_e - sg(z_q)||^2, which keeps the encoder's outputs
near the codes they chose. The codebook itself has no loss term: each entry is the running mean of
the encoder outputs assigned to it (`ema_codebook_update`), and an entry whose running usage falls
below a threshold is moved onto a random encoder output of the batch (`restart_dead_codes`), so
no code stays unused.
"""
import jax
import jax.numpy as jnp

from gen_jax.objectives.vae import discretized_logistic_log_prob


def vqvae_loss(images: jax.Array, decoded: tuple[jax.Array, jax.Array], z_e: jax.Array,
               z_q: jax.Array, num_levels: int, commitment_weight: float) -> dict[str, jax.Array]:
  """Per-image VQ-VAE terms in nats.

  Args:
    images: [b, H, W, C] on the discretization grid in [-1, 1].
    decoded: (mean, log_scale), each [b, H, W, C], from the straight-through quantized latents.
    z_e: [b, h, w, D] encoder outputs; z_q: [b, h, w, D] their codebook entries.
    num_levels: pixel levels of the data.
    commitment_weight: beta.
  Returns:
    dict of [b] arrays: reconstruction (-log p(x | z_q)), commitment (||z_e - sg(z_q)||^2 summed
    over the grid and the code width) and loss (reconstruction + beta * commitment).
  """
  b = images.shape[0]
  recon = -discretized_logistic_log_prob(images, *decoded, num_levels).reshape(b, -1).sum(axis=-1)
  commitment = jnp.sum((z_e - jax.lax.stop_gradient(z_q)).reshape(b, -1) ** 2, axis=-1)
  return {"reconstruction": recon, "commitment": commitment,
          "loss": recon + commitment_weight * commitment}


def code_counts(codes: jax.Array, num_codes: int, weights: jax.Array | None = None) -> jax.Array:
  """codes [n] int (weights [n], 0 for padding) -> [K] float32 weighted usage counts."""
  one_hot = jax.nn.one_hot(codes, num_codes, dtype=jnp.float32)  # [n, K]
  if weights is not None:
    one_hot = one_hot * weights[:, None]
  return one_hot.sum(axis=0)


def perplexity_from_counts(counts: jax.Array) -> jax.Array:
  """exp(entropy) of the usage distribution counts / sum(counts): K when every code of K is used
  equally, 1 when one code takes everything. counts: [K]."""
  p = counts / jnp.maximum(counts.sum(), 1e-12)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.exp(entropy)


def code_perplexity(codes: jax.Array, num_codes: int, weights: jax.Array | None = None
                    ) -> jax.Array:
  """Perplexity of the codes' usage in a batch; codes [n] int, weights [n] (0: not counted)."""
  return perplexity_from_counts(code_counts(codes, num_codes, weights))


def ema_codebook_update(cluster_size: jax.Array, embed_sum: jax.Array, vectors: jax.Array,
                        codes: jax.Array, weights: jax.Array, decay: float, epsilon: float
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One EMA step of the codebook statistics (VQ-VAE-2, appendix A):

    cluster_size <- decay * cluster_size + (1 - decay) * n_k   (n_k: vectors assigned to k)
    embed_sum    <- decay * embed_sum + (1 - decay) * sum of the vectors assigned to k
    codebook_k    = embed_sum_k / ((cluster_size_k + eps) / (n + K eps) * n)
                    with n = sum_k cluster_size_k

  The Laplace smoothing keeps the division finite for a code no vector chose, without changing
  the total count n.

  Args:
    cluster_size: [K]; embed_sum: [K, D]: the statistics so far.
    vectors: [n, D] encoder outputs; codes: [n] their nearest codes; weights: [n] (0: padding).
    decay: the EMA's decay in [0, 1); epsilon: the Laplace smoothing.
  Returns:
    (cluster_size [K], embed_sum [K, D], codebook [K, D]), float32.
  """
  num_codes = cluster_size.shape[0]
  assigned = jax.nn.one_hot(codes, num_codes, dtype=jnp.float32) * weights[:, None]  # [n, K]
  cluster_size = decay * cluster_size + (1 - decay) * assigned.sum(axis=0)
  embed_sum = decay * embed_sum + (1 - decay) * (assigned.T @ vectors.astype(jnp.float32))
  total = cluster_size.sum()
  smoothed = (cluster_size + epsilon) / (total + num_codes * epsilon) * total  # [K]
  return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def restart_dead_codes(codebook: jax.Array, cluster_size: jax.Array, embed_sum: jax.Array,
                       vectors: jax.Array, weights: jax.Array, threshold: float, rng: jax.Array
                       ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Jukebox's random restarts: every code whose EMA usage is below `threshold` is moved onto an
  encoder output of the batch drawn at random (distinct ones while the batch has enough), and its
  statistics restart as if that one vector had been assigned to it (cluster_size 1, embed_sum the
  vector). threshold 0 restarts nothing.

  Args:
    codebook, embed_sum: [K, D]; cluster_size: [K] (after this step's EMA update).
    vectors: [n, D] the batch's encoder outputs; weights: [n] (0: padding, never drawn).
  Returns:
    (codebook, cluster_size, embed_sum, number of codes restarted (float32 scalar)).
  """
  num_codes, n = cluster_size.shape[0], vectors.shape[0]
  # Gumbel top-k: a draw without replacement among the counted rows.
  scores = jnp.where(weights > 0, jax.random.gumbel(rng, (n,)), -jnp.inf)
  picks = jax.lax.top_k(scores, min(num_codes, n))[1]
  picks = jnp.resize(picks, (num_codes,))  # Fewer rows than codes: some rows serve twice.
  fresh = vectors[picks].astype(jnp.float32)  # [K, D]
  dead = cluster_size < threshold  # [K]
  codebook = jnp.where(dead[:, None], fresh, codebook)
  embed_sum = jnp.where(dead[:, None], fresh, embed_sum)
  cluster_size = jnp.where(dead, 1.0, cluster_size)
  return codebook, cluster_size, embed_sum, dead.sum().astype(jnp.float32)
