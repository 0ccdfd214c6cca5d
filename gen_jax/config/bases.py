"""Each family's base config: the fields and defaults every config of that family starts from."""
import functools
from typing import Callable

import ml_collections

from gen_jax.config import classifier, diffusion, flow, gan, llm, vae, vqvae

FAMILY_BASES: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "llm": llm.base,
    "reward": functools.partial(llm.preference_base, "reward"),
    "dpo": functools.partial(llm.preference_base, "dpo"),
    "ppo": functools.partial(llm.rl_base, "ppo"),
    "grpo": functools.partial(llm.rl_base, "grpo"),
    "vae": vae.base,
    "diffusion": diffusion.base,
    "latent_diffusion": diffusion.latent_base,
    "gan": gan.base,
    "flow": flow.base,
    "vqvae": vqvae.base,
    "vq_prior": vqvae.prior_base,
    "classifier": classifier.base,
}


def fill_missing_fields(config: ml_collections.ConfigDict,
                        defaults: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Adds to `config`, in place, every field of `defaults` it lacks (whole sections included);
  returns the dotted names added. Fields `config` has are kept, whatever `defaults` says."""
  added = []
  for key in defaults.keys():
    name = f"{prefix}{key}"
    default = defaults[key]
    if key not in config:
      config[key] = (ml_collections.ConfigDict(default.to_dict())
                     if isinstance(default, ml_collections.ConfigDict) else default)
      added.append(name)
    elif (isinstance(default, ml_collections.ConfigDict)
          and isinstance(config[key], ml_collections.ConfigDict)):
      added += fill_missing_fields(config[key], default, f"{name}.")
  return added
