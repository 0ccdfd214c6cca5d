"""What the alignment stages (gen_jax.families.reward, .dpo) share: their validation, preference
pair data and the forward pass over both responses of a pair.

A stage starts from an earlier one through init.source (an SFT workdir, a GGUF or Hugging Face
model) and takes its tokenizer and chat template. Preference data (data.format='preference') is
the synthetic arithmetic task's pairs (data.source='synthetic:arithmetic': the right answer chosen,
a plausible wrong one rejected; gen_jax.data.synthetic_tasks) or a local .jsonl of
{"prompt", "chosen", "rejected"} lines.
"""
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import data as data_lib
from gen_jax import objectives, partition
from gen_jax.config.errors import ConfigError, require
from gen_jax.data import conversations, synthetic_tasks
from gen_jax.families import llm, llm_sources, llm_text
from gen_jax.lora import is_adapter
from gen_jax.models import Transformer, TransformerConfig
from gen_jax.models.transformer import output_layer
from gen_jax.train.task import ParamSpec, Task

RESPONSES = ("chosen", "rejected")
PAIR_FIELDS = ("tokens", "segment_ids", "positions", "loss_mask")


POLICY, REFERENCE = "policy", "reference"


def validate_policy_stage(config: ml_collections.ConfigDict) -> None:
  """The model, init.source and task of a stage that trains a language model."""
  llm.validate_model(config)
  require(not config.distill.teacher, "distill.teacher",
          f"{config.distill.teacher!r}: distillation is a stage of its own (family 'llm'); "
          f"leave it empty in a {config.family} run")
  llm.validate_sources(config)
  llm.validate_task(config)


def validate_stage(config: ml_collections.ConfigDict) -> None:
  """An alignment stage trained on preference pairs (reward, dpo)."""
  d, p = config.data, config.pairs
  require(p.rejected in ("rules", "policy"), "pairs.rejected",
          f"{p.rejected!r}: use 'rules' or 'policy'")
  if p.rejected == "policy":  # Before init.source loads: these need nothing read.
    require(llm.SYNTHETIC_SOURCE in (d.source, d.eval_source), "pairs.rejected",
            f"'policy' makes the synthetic task's pairs, but data.source={d.source!r} and "
            f"data.eval_source={d.eval_source!r} name none")
    require(bool(config.init.source), "pairs.rejected",
            "'policy' samples init.source's model, and init.source is empty")
    for name in ("policy_replies", "temperature", "max_new_tokens"):
      require(p[name] > 0, f"pairs.{name}", f"must be positive, got {p[name]}")
  require(not p.mirror or d.source == llm.SYNTHETIC_SOURCE, "pairs.mirror",
          f"mirrors the synthetic task's training pairs, but data.source={d.source!r}")
  validate_policy_stage(config)
  require(d.format == "preference", "data.format",
          f"{d.format!r}: a {config.family} run trains on preference pairs; set 'preference'")
  pairs_source = lambda s: s == llm.SYNTHETIC_SOURCE or s.endswith(".jsonl")  # noqa: E731
  require(pairs_source(d.source), "data.source",
          f"{d.source!r}: use {llm.SYNTHETIC_SOURCE!r} or a .jsonl file of "
          '{"prompt", "chosen", "rejected"} lines')
  require(not d.eval_source or pairs_source(d.eval_source), "data.eval_source",
          f"{d.eval_source!r}: use {llm.SYNTHETIC_SOURCE!r} or a .jsonl file of pairs")
  require(0 < d.eval_fraction < 1, "data.eval_fraction", f"must be in (0, 1), got {d.eval_fraction}")


def policy_and_reference(config) -> tuple[Transformer, Transformer]:
  """The trained policy and its frozen reference (the same model without adapters: the base they
  adapt)."""
  policy_config = TransformerConfig.from_config(config.model)
  return Transformer(policy_config), Transformer(dataclasses.replace(policy_config, lora_rank=0))


def token_log_probs(net: Transformer, params, model_inputs: tuple, targets: jax.Array,
                    logit_chunks: int = 0) -> jax.Array:
  """[b, t] log p(target) of `net` reading model_inputs (`output_stats`)."""
  hidden = net.apply({"params": params}, *model_inputs, outputs="hidden")
  return output_stats(net, params, hidden, targets, logit_chunks)


def output_stats(net: Transformer, params, hidden: jax.Array, targets: jax.Array,
                 logit_chunks: int = 0, stats_fn=objectives.token_log_probs):
  """stats_fn(logits, targets) (per-position [b, t] arrays) of the logits `net`'s output layer
  makes of its final hidden states [b, t, d] (`Transformer(outputs="hidden")`); with
  logit_chunks > 0 a slice of positions at a time (objectives.chunked_logit_stats), so the
  [b, t, vocab] logits never exist whole."""
  logits_fn = functools.partial(output_layer, net.config, params)
  if not logit_chunks:
    return stats_fn(logits_fn(hidden), targets)
  return objectives.chunked_logit_stats(hidden, logits_fn, targets, logit_chunks, stats_fn)


def log_probs_and_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(log p(target), the next-token entropy as a metric: no gradient), each [b, t]: the stats
  PPO's and GRPO's losses read."""
  return (objectives.token_log_probs(logits, targets),
          jax.lax.stop_gradient(objectives.token_entropy(logits)))


def policy_param_spec(config) -> ParamSpec:
  """{"policy", "reference"}: two copies of init.source's weights (or of one seeded random init);
  only the policy trains (only its adapters, with model.lora_rank > 0)."""
  policy, reference = policy_and_reference(config)
  dummy = jnp.zeros((1, config.model.max_seq_len), jnp.int32)

  def init(rng):  # One rng: the reference starts where the policy does.
    return {POLICY: policy.init(rng, dummy)["params"],
            REFERENCE: reference.init(rng, dummy)["params"]}

  def trainable(path):
    return path[0] == POLICY and (is_adapter(path) or not config.model.lora_rank)

  def pretrained():
    flat = partition.flatten(llm_sources.load(config.init.source, "init.source").params)
    return {(role,) + path: value for role in (POLICY, REFERENCE) for path, value in flat.items()}

  return ParamSpec(init, trainable, pretrained if config.init.source else None)


def inference_params(config, params) -> tuple[TransformerConfig, dict]:
  """The policy, adapters folded in (what sampling, export and a later stage use)."""
  return llm.inference_params(config, params[POLICY])


def sample(config, params, workdir: str, request) -> str:
  """gen_jax.sample --workdir: generates with the policy."""
  model_config, params = inference_params(config, params)
  return llm_text.generate_text(model_config, params, data_lib.Tokenizer.load(workdir), request)


def policy_replies(config, problems: list, held_out: bool) -> list[list[str]]:
  """pairs.policy_replies replies of init.source's model to each problem, sampled at
  pairs.temperature (seeded by config.seed)."""
  from gen_jax.families import rl  # rl builds on this module.
  from gen_jax.sampling import SamplingParams
  from gen_jax.train.state import rng_for
  p = config.pairs
  source = llm_sources.load(config.init.source, "init.source")  # Adapters merged.
  return rl.sampled_replies(
      Transformer(source.config), jax.device_put(source.params), source.tokenizer, problems,
      num_replies=p.policy_replies, sampling_params=SamplingParams(temperature=p.temperature),
      max_new_tokens=p.max_new_tokens, batch_size=max(1, 512 // p.policy_replies),
      rng=rng_for(config.seed, f"policy pairs {int(held_out)}"), field="pairs.max_new_tokens")


def _pairs(config, source: str, field: str, held_out: bool) -> list:
  if source == llm.SYNTHETIC_SOURCE:
    problems = llm.task_problems(config)[1 if held_out else 0]
    replies = None
    if config.pairs.rejected == "policy":
      replies = policy_replies(config, problems, held_out)
      own = sum(any(not synthetic_tasks.exact_match_reward(p, r) for r in rs)
                for p, rs in zip(problems, replies))
      print(f"{field}: {own} of {len(problems)} {'held-out' if held_out else 'training'} pairs "
            f"reject a wrong reply of init.source's model; the rest a rule-made mistake "
            f"(its {config.pairs.policy_replies} replies were all right)", flush=True)
    # Its own seed stream: the wrong answers differ between the training and held-out pairs.
    pairs = synthetic_tasks.preference_pairs(problems, seed=config.task.seed + int(held_out),
                                             replies=replies)
    if config.pairs.mirror and not held_out:  # Held-out pairs stay the task's own.
      held_out_prompts = frozenset(p.prompt for p in llm.task_problems(config)[1])
      mirrored = synthetic_tasks.mirrored_pairs(pairs, max_digits=config.task.max_digits,
                                                excluded=held_out_prompts)
      print(f"pairs.mirror: {len(mirrored)} mirrored pairs added to the {len(pairs)} training "
            "pairs", flush=True)
      pairs += mirrored
    return pairs
  return conversations.load_preference_pairs(source, field)


def preference_pairs(config) -> tuple[list, list]:
  """(training, held-out) PreferencePairs of config.data."""
  d = config.data
  train = _pairs(config, d.source, "data.source", held_out=False)
  if d.eval_source:
    return train, _pairs(config, d.eval_source, "data.eval_source", held_out=True)
  if d.source == llm.SYNTHETIC_SOURCE:
    return train, _pairs(config, d.source, "data.source", held_out=True)
  return conversations.split_items(train, d.eval_fraction)


def pair_arrays(tok: data_lib.Tokenizer, pairs: list, seq_len: int, field: str
                ) -> dict[str, np.ndarray]:
  """Each pair's two conversations (prompt + response) as rows of seq_len + 1 tokens.

  Returns:
    {f"{response}_{name}"} for response in RESPONSES and name in PAIR_FIELDS: int32 [num_pairs,
    seq_len + 1]; loss_mask is 1 on the response's tokens (what the chat template adds for the
    assistant turn), so row i of chosen_* and of rejected_* share pair i's prompt.
  """
  from gen_jax.interop import encode_chat  # Only chat needs jinja2.
  arrays = {}
  for response in RESPONSES:
    try:
      examples = [encode_chat(tok, [*pair.prompt, {"role": "assistant",
                                                   "content": getattr(pair, response)}])
                  for pair in pairs]
    except ValueError as e:
      raise ConfigError(field, str(e)) from None
    packed, cut = data_lib.pack_examples(examples, tok.pad_id, seq_len, one_per_window=True)
    if cut:
      print(f"{field}: {cut} of {len(pairs)} {response} conversations are longer than "
            f"model.max_seq_len + 1 = {seq_len + 1} tokens and were cut to it", flush=True)
    arrays.update({f"{response}_{name}": packed[name] for name in PAIR_FIELDS})
  return arrays


def pair_dry_run_batch(config) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch of pair_arrays rows (with the pipeline's example_weight), as shapes."""
  shape = (config.train.batch_size, config.model.max_seq_len + 1)
  shapes = {f"{response}_{name}": jax.ShapeDtypeStruct(shape, jnp.int32)
            for response in RESPONSES for name in PAIR_FIELDS}
  return {**shapes, data_lib.EXAMPLE_WEIGHT: jax.ShapeDtypeStruct(shape[:1], jnp.float32)}


class PairRows(NamedTuple):
  """Both responses of a batch of pairs as 2b rows, chosen rows first, shifted for next-token
  prediction; each field [2b, t]."""
  model_inputs: tuple  # (input tokens, positions, segment_ids): what the model reads.
  targets: jax.Array  # The next token at each position.
  target_weights: jax.Array  # 1 where the target is a response token (what log-probs sum over).
  response_inputs: jax.Array  # 1 where the input is a response token (a reward reads the last).


def both_responses(batch) -> PairRows:
  """One batch of 2b sequences from a batch of alignment.pair_arrays rows, so one forward pass
  covers both responses."""
  def stacked(name):
    return jnp.concatenate([batch[f"{r}_{name}"] for r in RESPONSES], axis=0)  # [2b, t + 1]
  tokens, segment_ids, loss_mask = stacked("tokens"), stacked("segment_ids"), stacked("loss_mask")
  inputs, targets, weights = objectives.packed_targets(tokens, segment_ids)
  return PairRows((inputs, stacked("positions")[:, :-1], segment_ids[:, :-1]), targets,
                  weights * loss_mask[:, 1:], loss_mask[:, :-1])


def build_pair_task(config, workdir: str, resuming: bool, *, param_spec: ParamSpec,
                    loss_fn) -> Task:
  """The Task of a stage trained on preference pairs (reward, dpo)."""
  _, train_data, eval_data = build_pair_data(config, workdir, resuming)
  return Task(params=param_spec, loss_fn=loss_fn, train_data=train_data, eval_data=eval_data,
              eval_metrics=lambda totals: {}, throughput_unit="examples", units_per_example=1)


def build_pair_data(config, workdir: str, resuming: bool):
  """(tokenizer, this host's training dataset, held-out pass factory) of preference pairs."""
  train_pairs, eval_pairs = preference_pairs(config)
  texts = [data_lib.Document("", text) for pair in train_pairs
           for text in (*(m["content"] for m in pair.prompt), pair.chosen, pair.rejected)]
  tok = llm.tokenizer_for(config, workdir, texts, resuming)
  seq_len = config.model.max_seq_len
  train_arrays = pair_arrays(tok, train_pairs, seq_len, "data.source")
  eval_arrays = pair_arrays(tok, eval_pairs, seq_len, "data.eval_source")
  num_hosts = jax.process_count()
  if len(train_pairs) // num_hosts < config.train.batch_size // num_hosts:
    raise ConfigError("data.source", f"{len(train_pairs)} training pairs, fewer than one batch "
                      f"(train.batch_size={config.train.batch_size})")
  train_data, eval_data = data_lib.host_pipelines(
      train_arrays, eval_arrays, global_batch_size=config.train.batch_size,
      grad_accum_steps=config.train.grad_accum_steps,
      eval_max_batches=config.train.eval_max_batches, seed=config.seed,
      process_index=jax.process_index(), process_count=num_hosts)
  return tok, train_data, eval_data
