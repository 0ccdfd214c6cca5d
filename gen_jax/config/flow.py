"""The flow family base: Glow (actnorm, invertible 1x1 convs, affine couplings, multi-scale)."""
import ml_collections

from gen_jax.config.image import image_base


def base() -> ml_collections.ConfigDict:
  config = image_base("flow")
  config.model.update(dict(
      levels=2,  # Scales; model.image_size must be divisible by 2**levels.
      steps_per_level=8,  # [actnorm, 1x1 conv, affine coupling] steps per scale.
      hidden_channels=64,  # Width of each coupling network.
      # Couplings' log-scales are bounded to (-max_log_scale, max_log_scale) by a tanh.
      max_log_scale=3.0,
      # Glow's learned prior for each factored-out half (a Gaussian conditioned on the kept
      # half); False: N(0, I).
      learned_prior=True,
  ))
  config.flow = ml_collections.ConfigDict(dict(
      # Actnorm's data-dependent init uses the first init_batch_size training images (the same
      # on every host; dequantized); 0: actnorm starts as the identity.
      init_batch_size=256,
  ))
  # Every prior's std is multiplied by the temperature in eval grids and gen_jax.sample (whose
  # --temperature overrides it when > 0); 1 samples the model itself.
  config.sample.temperature = 1.0
  # Glow's warmup then Adam; the loss is bits/dim, so gradients are of order one.
  config.optimizer.update(dict(b2=0.999, warmup_steps=200))
  return config
