"""gen_jax: generative models in JAX/Flax.

Packages: config (experiment configs), models, ops, parallel, data, objectives, train (the generic
loop), families (what each model family plugs into it), sampling, eval. Entry points: gen_jax.main
(train) and gen_jax.sample.
"""
__version__ = "0.1.0"
