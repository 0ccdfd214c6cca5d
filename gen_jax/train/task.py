"""What a model family plugs into the generic loop.

A family (gen_jax.families.*) builds a Task from its config: how to initialize parameters, a pure
loss, its data, how to turn summed held-out statistics into metrics, and what to write at eval time
(sample grids, text samples). The loop owns jit, sharding, checkpoints, metrics and hooks.
"""
import dataclasses
from typing import Any, Callable, Iterator

import grain
import jax
import numpy as np

Batch = dict[str, jax.Array]
Path = tuple[str, ...]
# loss_fn(params, batch, rng) -> (loss_sum, sums): `sums` holds "weight" (how many units counted:
# tokens, images) and any other summed statistics. The reported loss is loss_sum / weight (e.g. nats
# summed over tokens / number of tokens) and every other statistic is reported as sum / weight.
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
WEIGHT = "weight"
# experience(params, extra, batch, rng) -> (batch, extra, metrics): an on-policy stage's statistics
# of a freshly sampled batch under the current params (old log-probs, values, advantages), jitted
# inside the train step; `extra` is TrainState.extra (e.g. an adaptive KL coefficient).
ExperienceFn = Callable[[Any, dict, Batch, jax.Array], tuple[Batch, dict, dict[str, jax.Array]]]
# statistics_update(params, batch, rng) -> ({leaf path: new value}, metrics): leaves set from batch
# statistics rather than by a gradient (a VQ-VAE's EMA codebook), computed under the step's
# starting params and written over those (trainable) leaves after the optimizer's update.
StatisticsUpdateFn = Callable[[Any, Batch, jax.Array],
                              tuple[dict[tuple[str, ...], jax.Array], dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class OptimizerGroup:
  """Trainable leaves one optimizer of several updates, in its own phase of the train step.

  A GAN has two groups, discriminator then generator: the phases run in order, each on the params
  as the phases before it left them; a phase differentiates its loss (Task.phase_losses[name])
  with respect to the leaves it `owns` only and its own AdamW (config[section]) updates them,
  keeping its state in TrainState.opt_state[name]. Its metrics read <name>/loss, <name>/grad_norm.
  """
  name: str
  owns: Callable[[Path], bool]
  section: str = "optimizer"  # The config section of this optimizer's settings.


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """How a run's parameters start, and which of them train (gen_jax.partition)."""
  init: Callable[[jax.Array], Any]  # rng -> params (with logical partitioning metadata).
  # Leaf path -> whether it trains; None: every leaf. The rest are frozen: the loss reads them but
  # they get no gradient, no optimizer state and no place in checkpoints.
  trainable: Callable[[Path], bool] | None = None
  # () -> {leaf path: host array}: values from an earlier stage or an imported model that replace
  # those leaves' random init (and rebuild frozen leaves when a run resumes).
  pretrained: Callable[[], dict[Path, np.ndarray]] | None = None
  # Scalars the train step carries from step to step besides the params (PPO's adaptive KL
  # coefficient): their starting values; held in TrainState.extra and checkpointed with it.
  extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # Several optimizers, one phase of the step each, in order; (): one (config.optimizer) over all.
  optimizers: tuple[OptimizerGroup, ...] = ()


@dataclasses.dataclass
class Task:
  params: ParamSpec
  loss_fn: LossFn
  train_data: grain.MapDataset  # Infinite, batched (this host's share of the global batch).
  eval_data: Callable[[], Iterator[dict[str, np.ndarray]]]  # One held-out pass, padded batches.
  # Summed held-out statistics (loss_sum, weight and metric sums) -> extra named metrics.
  eval_metrics: Callable[[dict[str, float]], dict[str, float]]
  throughput_unit: str  # "tokens" or "examples": names train/<unit>_per_sec.
  units_per_example: int  # e.g. sequence length for tokens.
  # Called at eval time with the current params and step; writes outputs, returns extra metrics.
  on_eval: Callable[[Any, int], dict[str, float]] | None = None
  # On-policy stages: (params, host batch, rng) -> host batch, run before every step on what
  # train_data gives (prompts): samples responses with the current params and scores them on the
  # host where rewards are Python functions. Then `experience` runs inside the jitted step.
  rollout: Callable[[Any, dict[str, np.ndarray], jax.Array], dict[str, np.ndarray]] | None = None
  experience: ExperienceFn | None = None
  # With ParamSpec.optimizers: each group's training loss by name; `loss_fn` then serves only
  # held-out evaluation.
  phase_losses: dict[str, LossFn] = dataclasses.field(default_factory=dict)
  statistics_update: StatisticsUpdateFn | None = None
  progress_metric: str = "loss"  # The train metric the progress bar shows.
