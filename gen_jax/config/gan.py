"""The gan family base: a DCGAN-style generator and discriminator on small images.

Two optimizers: `optimizer` trains the generator and `discriminator_optimizer` (same fields) the
discriminator; each train step updates the discriminator first, then the generator.
"""
import ml_collections

from gen_jax.config.image import image_base


def base() -> ml_collections.ConfigDict:
  config = image_base("gan")
  config.model.update(dict(
      latent_dim=32,
      # From the lowest resolution up; image_size must be divisible by 2**len(generator_channels).
      generator_channels=(64, 32),
      discriminator_channels=(32, 64),
      num_classes=0,  # > 0: class-conditional; must equal the data's number of classes.
  ))
  config.gan = ml_collections.ConfigDict(dict(
      loss="non_saturating",  # Or "hinge".
      # gamma of the R1 penalty (gamma / 2 * ||grad_x D(x)||^2 on real images, added to the
      # discriminator's loss); 0 disables it.
      r1_weight=0.0,
  ))
  # DCGAN's Adam: a constant 2e-4 with b1 = 0.5 (momentum slows the adversarial game's
  # oscillations down less), no weight decay, no warmup, no clipping.
  config.optimizer.update(dict(learning_rate=2e-4, b1=0.5, b2=0.999, weight_decay=0.0,
                               warmup_steps=0, min_lr_ratio=1.0, grad_clip_norm=0.0))
  config.discriminator_optimizer = ml_collections.ConfigDict(config.optimizer.to_dict())
  # The generator samples from the weights' EMA (the whole trainable tree is averaged).
  config.train.ema_decay = 0.999
  return config
