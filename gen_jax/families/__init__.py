"""Model families: each turns a config into a Task for the generic loop, and samples.

A family module offers:
  validate(config)                 checks config.model/config.data; raises ConfigError.
  param_spec(config)               a gen_jax.train.ParamSpec: init (rng -> params with logical axis
                                   names), which leaves train, pretrained values (no data needed).
  build_task(config, workdir, resuming)  loads data and returns a gen_jax.train.Task; when
                                   resuming it reuses what the workdir saved (the tokenizer).
  sample(config, params, workdir, request)  generates from trained params (gen_jax.sample); an
                                   image generator offers instead
  generate(config, params, workdir, request)  (images [n, H, W, C] in [-1, 1], what they are),
                                   which gen_jax.sample writes as a grid and benchmarks score.
  dry_run_inputs(config)           (loss_fn, global batch shapes) without data, for --dry_run.
An on-policy family (ppo, grpo) also offers
  make_experience_fn(config)       its step's experience(params, extra, batch, rng): the rollout
                                   batch scored (log-probabilities, advantages) before the update.
A language-model family (one a later stage can start from, and export) also offers
  inference_params(config, params)  (TransformerConfig, params) of the model it trains.
"""
import importlib

from gen_jax.config.errors import ConfigError

# llm: pretraining, SFT and distillation; reward, dpo, ppo and grpo: the alignment stages
# (gen_jax.families.alignment, gen_jax.families.rl). The image families share
# gen_jax.families.images; classifier trains the Fashion-MNIST classifier sample metrics use.
FAMILIES = ("llm", "reward", "dpo", "ppo", "grpo", "vae", "diffusion", "latent_diffusion", "gan",
            "flow", "vqvae", "vq_prior", "classifier")


def get(name: str):
  if name not in FAMILIES:
    raise ConfigError("family", f"unknown family {name!r}; families are {FAMILIES}")
  return importlib.import_module(f"gen_jax.families.{name}")
