"""The reward family: a reward model learns which of two responses people (here: a program)
prefer, with the Bradley-Terry loss (Ouyang et al., 2022, "Training language models to follow
instructions with human feedback").

The model is the language model's body with a scalar head (gen_jax.models.RewardModel), started
from an earlier stage (init.source: the SFT workdir) with a fresh head; a response's reward is the
head's score at its last token. Held-out pairwise accuracy is `eval/accuracy`.
"""
import jax
import jax.numpy as jnp
import ml_collections

from gen_jax import data as data_lib
from gen_jax import objectives, partition
from gen_jax.config.errors import ConfigError, require
from gen_jax.families import alignment, llm_sources
from gen_jax.lora import is_adapter
from gen_jax.models import RewardModel, TransformerConfig
from gen_jax.train.task import WEIGHT, ParamSpec, Task

HEAD = "head"


def validate(config: ml_collections.ConfigDict) -> None:
  alignment.validate_stage(config)
  require(config.reward.center_weight >= 0, "reward.center_weight",
          f"must be >= 0, got {config.reward.center_weight}")


def model(config: ml_collections.ConfigDict) -> RewardModel:
  return RewardModel(TransformerConfig.from_config(config.model))


def param_spec(config: ml_collections.ConfigDict) -> ParamSpec:
  """{"backbone": the transformer without its output layer, "head": the scalar head}; the backbone
  starts from init.source, the head from its random init; with model.lora_rank > 0 only the
  backbone's adapters and the head train."""
  net = model(config)
  dummy = jnp.zeros((1, config.model.max_seq_len), jnp.int32)
  init = lambda rng: net.init(rng, dummy)["params"]  # noqa: E731

  def trainable(path):
    return path[0] == HEAD or is_adapter(path)

  def pretrained():
    known = set(partition.flatten(jax.eval_shape(init, jax.random.key(0))))
    loaded = llm_sources.load(config.init.source, "init.source")
    # The source's output layer (lm_head) has no place here: the head replaces it.
    return {("backbone",) + path: value for path, value in partition.flatten(loaded.params).items()
            if ("backbone",) + path in known}

  return ParamSpec(init, trainable if config.model.lora_rank else None,
                   pretrained if config.init.source else None)


def rewards(net: RewardModel, params, batch) -> tuple[jax.Array, jax.Array]:
  """(chosen rewards [b], rejected rewards [b]) of a batch of alignment.pair_arrays rows: the
  score at each response's last token (within the model's context)."""
  rows = alignment.both_responses(batch)
  scores = net.apply({"params": params}, *rows.model_inputs)  # [2b, t]
  return jnp.split(objectives.last_token_values(scores, rows.response_inputs), 2)


def make_loss_fn(config: ml_collections.ConfigDict):
  """loss_fn(params, batch, rng) -> (summed Bradley-Terry loss + reward.center_weight * the
  pair's (r_chosen + r_rejected)^2, sums) over the batch's pairs."""
  net = model(config)
  center_weight = config.reward.center_weight

  def loss_fn(params, batch, rng):
    del rng
    chosen, rejected = rewards(net, params, batch)
    losses, accuracy = objectives.bradley_terry_loss(chosen, rejected)
    losses = losses + center_weight * (chosen + rejected) ** 2
    w = batch[data_lib.EXAMPLE_WEIGHT]  # 0 on the rows that pad a held-out batch.
    sums = {WEIGHT: w.sum(), "accuracy": (accuracy * w).sum(),
            "reward_margin": ((chosen - rejected) * w).sum(),
            "chosen_reward": (chosen * w).sum(), "rejected_reward": (rejected * w).sum()}
    return (losses * w).sum(), sums
  return loss_fn


def dry_run_inputs(config: ml_collections.ConfigDict):
  return make_loss_fn(config), alignment.pair_dry_run_batch(config)


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  return alignment.build_pair_task(config, workdir, resuming, param_spec=param_spec(config),
                                   loss_fn=make_loss_fn(config))


def sample(config, params, workdir: str, request) -> str:
  raise ConfigError("--workdir", f"{workdir!r} holds a reward model: it scores responses and does "
                    "not generate text")
