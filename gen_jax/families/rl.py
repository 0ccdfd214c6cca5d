"""What the on-policy stages (gen_jax.families.ppo, .grpo) share: the synthetic task's prompts, the
rollouts that sample responses to them, the token layout of prompt + response, and the held-out
evaluation of a policy.

A rollout is one call of the jitted KV-cache sampler (gen_jax.sampling.sample_continuations) on a
[b, P] batch of left-padded prompts, P fixed for the run (the longest prompt of the task), so the
same compiled function serves every step. A sequence is the prompt's P columns then the
response's N = rollout.max_new_tokens columns; `response_mask` marks the response's tokens (its
end-of-turn token included, nothing after it).
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import data as data_lib
from gen_jax import objectives
from gen_jax.config.errors import ConfigError, require
from gen_jax.data import synthetic_tasks
from gen_jax.families import alignment, llm
from gen_jax.sampling import SamplingParams, sample_continuations
from gen_jax.train.state import rng_for
from gen_jax.train.task import Task

PROMPT_FIELDS = ("prompt_tokens", "prompt_lengths", "problem_index")
SEQUENCE_FIELDS = ("tokens", "segment_ids", "positions", "response_mask")
TRUE_REWARD = "true_reward"  # A rollout's [b] exact-match rewards: a metric, not a training signal.


def validate_rollout(config: ml_collections.ConfigDict) -> None:
  """The model, init.source, prompt data and rollout settings of an on-policy stage."""
  alignment.validate_policy_stage(config)
  d, r = config.data, config.rollout
  require(d.format == "prompts", "data.format",
          f"{d.format!r}: a {config.family} run samples responses to prompts; set 'prompts'")
  require(d.source == llm.SYNTHETIC_SOURCE, "data.source",
          f"{d.source!r}: rewards need answers a program can check; use {llm.SYNTHETIC_SOURCE!r}")
  require(r.max_new_tokens > 0, "rollout.max_new_tokens", f"must be positive, got {r.max_new_tokens}")
  require(r.temperature > 0, "rollout.temperature",
          f"must be positive (on-policy updates need sampled responses), got {r.temperature}")
  try:
    sampling(config).validate()
  except ValueError as e:
    raise ConfigError("rollout", str(e)) from None
  require(r.eval_batch_size > 0, "rollout.eval_batch_size",
          f"must be positive, got {r.eval_batch_size}")
  require(config.objective.logit_chunks >= 0, "objective.logit_chunks",
          f"must be >= 0 (0: all logits at once), got {config.objective.logit_chunks}")


def dry_run_inputs(config: ml_collections.ConfigDict, loss_fn, *, repeat: int, scored: bool):
  """(loss_fn, the global batch shapes of one step's rollouts) for --dry_run: train.batch_size
  prompts x `repeat` responses, each sequence at its longest (model.max_seq_len tokens: the
  prompt width is known only once the prompts are tokenized), with "scores" where the rollout
  scores the responses on the host (`scored`). The step also runs the family's experience
  (make_experience_fn), as training does."""
  rows, length = config.train.batch_size * repeat, config.model.max_seq_len
  batch = {name: jax.ShapeDtypeStruct((rows, length), jnp.int32) for name in SEQUENCE_FIELDS}
  for name in (TRUE_REWARD, "scores") if scored else (TRUE_REWARD,):
    batch[name] = jax.ShapeDtypeStruct((rows,), jnp.float32)
  return loss_fn, batch


def sampling(config) -> SamplingParams:
  r = config.rollout
  return SamplingParams(temperature=r.temperature, top_k=r.top_k, top_p=r.top_p)


def end_of_turn(tok) -> tuple[tuple[int, ...], ...]:
  """The stop sequences of a chat reply: the template's end-of-turn token, where it has one."""
  from gen_jax.interop import chat_prompt  # Only chat needs jinja2.
  _, token = chat_prompt(tok, "?")
  return () if token is None or token == tok.eos_id else ((token,),)


def encode_prompts(tok, problems) -> list[list[int]]:
  """Each problem's question as a chat request: the user turn and the assistant turn's header."""
  from gen_jax.interop import chat_prompt  # Only chat needs jinja2.
  return [tok.encode(chat_prompt(tok, p.prompt)[0], add_special_tokens=False) for p in problems]


def prompt_arrays(prompts: list[list[int]], width: int, pad_id: int) -> dict[str, np.ndarray]:
  """{"prompt_tokens": [n, width] right-aligned, "prompt_lengths": [n], "problem_index": [n]}."""
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, width - len(prompt):] = prompt
  return {"prompt_tokens": tokens,
          "prompt_lengths": np.array([len(p) for p in prompts], np.int32),
          "problem_index": np.arange(len(prompts), dtype=np.int32)}


def prompt_width(config, tok) -> int:
  """P: the longest prompt of the task's training and held-out problems; P + max_new_tokens must
  fit model.max_seq_len (checked here, naming the fields)."""
  train, held_out = llm.task_problems(config)
  width = max(len(p) for p in encode_prompts(tok, train + held_out))
  require(width + config.rollout.max_new_tokens <= config.model.max_seq_len,
          "rollout.max_new_tokens",
          f"{config.rollout.max_new_tokens} new tokens after prompts of up to {width} tokens pass "
          f"model.max_seq_len={config.model.max_seq_len}")
  return width


@functools.partial(jax.jit, static_argnames=("pad_id",))
def sequences(prompt_tokens, prompt_lengths, responses, *, pad_id: int) -> dict[str, jax.Array]:
  """Prompt + response rows for scoring and training.

  Args:
    prompt_tokens: [b, P] right-aligned prompts; prompt_lengths: [b].
    responses: [b, N] from sample_continuations (-1 after a row stopped).
  Returns:
    SEQUENCE_FIELDS, each [b, P + N] int32: tokens (padding: pad_id), segment_ids (1 on the
    prompt's and the response's tokens), positions (from each row's first token), response_mask.
  """
  b, width = prompt_tokens.shape
  in_prompt = jnp.arange(width)[None] >= width - prompt_lengths[:, None]  # [b, P]
  in_response = responses >= 0  # [b, N]
  tokens = jnp.concatenate([prompt_tokens, jnp.where(in_response, responses, pad_id)], axis=1)
  real = jnp.concatenate([in_prompt, in_response], axis=1)
  positions = jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0)
  response_mask = jnp.concatenate([jnp.zeros_like(in_prompt), in_response], axis=1)
  return {"tokens": tokens, "segment_ids": real.astype(jnp.int32),
          "positions": positions.astype(jnp.int32), "response_mask": response_mask.astype(jnp.int32)}


def shifted(batch) -> tuple[tuple, jax.Array, jax.Array]:
  """((inputs, positions, segment_ids) [b, T - 1], targets [b, T - 1], target mask [b, T - 1]: 1
  where the target is a response token) of a batch of `sequences` rows."""
  tokens = batch["tokens"]
  inputs = (tokens[:, :-1], batch["positions"][:, :-1], batch["segment_ids"][:, :-1])
  return inputs, tokens[:, 1:], batch["response_mask"][:, 1:].astype(jnp.float32)


def response_texts(tok, responses: np.ndarray, stops: tuple[tuple[int, ...], ...]) -> list[str]:
  """Each row's reply as text: its tokens before end-of-text or the end-of-turn token."""
  ends = {tok.eos_id, *(s[0] for s in stops if len(s) == 1)}
  texts = []
  for row in np.asarray(responses):
    kept = []
    for token in row:
      if token < 0 or token in ends:
        break
      kept.append(int(token))
    texts.append(tok.decode(kept))
  return texts


def rollout(net, params, prompts: dict, *, sampling_params: SamplingParams, max_new_tokens: int,
            tok, stops, rng, repeat: int = 1) -> tuple[dict, np.ndarray]:
  """Samples a response to each prompt (each prompt `repeat` times in a row: GRPO's group).

  Returns:
    (`sequences` rows [b * repeat, P + N] on device, the responses [b * repeat, N] on the host).
  """
  prompt_tokens = jnp.repeat(jnp.asarray(prompts["prompt_tokens"]), repeat, axis=0)
  prompt_lengths = jnp.repeat(jnp.asarray(prompts["prompt_lengths"]), repeat, axis=0)
  responses = sample_continuations(
      net, params, prompt_tokens, prompt_lengths, max_new_tokens=max_new_tokens,
      sampling=sampling_params, rng=rng, eos_id=tok.eos_id, stop_sequences=stops)
  return (sequences(prompt_tokens, prompt_lengths, responses, pad_id=tok.pad_id),
          np.asarray(responses))


def wrapped_batches(arrays: dict[str, np.ndarray], size: int):
  """(batch of `size` rows, how many are real) over prompt_arrays rows; the last batch wraps
  around to the first rows, so every batch has one shape (one compiled program)."""
  n = len(next(iter(arrays.values())))
  for start in range(0, n, size):
    rows = np.arange(start, start + size) % n
    yield {k: v[rows] for k, v in arrays.items()}, min(size, n - start)


def sampled_batches(net, params, tok, problems, *, num_replies: int,
                    sampling_params: SamplingParams, max_new_tokens: int, batch_size: int, rng,
                    field: str):
  """Yields (`sequences` rows [batch_size * num_replies, P + N] on device, their reply texts,
  the indices into `problems` of the real rows' prompts), num_replies consecutive rows per prompt.

  Batches of batch_size prompts (the last wraps around: one compiled shape; only its first
  real prompts' rows are texts and indices); `field` is named when the prompts plus
  max_new_tokens pass model.max_seq_len.
  """
  stops = end_of_turn(tok)
  prompts = encode_prompts(tok, problems)
  width = max(len(p) for p in prompts)
  require(width + max_new_tokens <= net.config.max_seq_len, field,
          f"{max_new_tokens} new tokens after prompts of up to {width} tokens pass the model's "
          f"max_seq_len={net.config.max_seq_len}")
  for index, (batch, real) in enumerate(
      wrapped_batches(prompt_arrays(prompts, width, tok.pad_id), batch_size)):
    rows, responses = rollout(net, params, batch, sampling_params=sampling_params,
                              max_new_tokens=max_new_tokens, tok=tok, stops=stops,
                              rng=jax.random.fold_in(rng, index * batch_size), repeat=num_replies)
    start = index * batch_size
    yield (rows, response_texts(tok, responses[:real * num_replies], stops),
           np.repeat(np.arange(start, start + real), num_replies))


def sampled_replies(net, params, tok, problems, *, num_replies: int, **sampling) -> list[list[str]]:
  """num_replies replies (texts) sampled from a policy for each problem's prompt; `sampling`:
  `sampled_batches`' sampling_params, max_new_tokens, batch_size, rng and field."""
  texts = [text for _, batch_texts, _ in sampled_batches(
      net, params, tok, problems, num_replies=num_replies, **sampling) for text in batch_texts]
  return [texts[i:i + num_replies] for i in range(0, len(texts), num_replies)]


@functools.partial(jax.jit, static_argnames=("net",))
def sequence_log_probs(net, params, batch) -> jax.Array:
  """[b] log pi(response | prompt) of each `sequences` row: the sum over its response tokens."""
  inputs, targets, mask = shifted(batch)
  return objectives.sequence_log_probs(net.apply({"params": params}, *inputs), targets, mask)


@functools.partial(jax.jit, static_argnames=("net", "reference"))
def _sequence_kl(net, params, reference, reference_params, batch) -> jax.Array:
  """[b] sum over each response's tokens of log pi - log pi_ref: the sampled estimate of the
  sequence-level KL(pi || pi_ref) (k1; unbiased on the policy's own samples)."""
  return (sequence_log_probs(net, params, batch)
          - sequence_log_probs(reference, reference_params, batch))


def evaluate_policy(net, params, reference, reference_params, tok, problems, *, config,
                    rng) -> dict[str, float]:
  """A policy on held-out problems: the mean true (programmatic) reward of its greedy replies,
  their format reward and length in tokens, and the KL to the reference of its sampled replies.

  Args:
    net, params: the policy; reference, reference_params: the model KL is measured against
      (the SFT stage; the policy itself gives 0).
    problems: synthetic_tasks.Problem list.
    config: the run's config (rollout.* and model.max_seq_len).
  Returns:
    {"true_reward", "format_reward", "kl_to_reference", "response_length"}.
  """
  stops = end_of_turn(tok)
  width = prompt_width(config, tok)
  arrays = prompt_arrays(encode_prompts(tok, problems), width, tok.pad_id)
  size = config.rollout.eval_batch_size
  totals = {"true_reward": 0.0, "format_reward": 0.0, "kl_to_reference": 0.0,
            "response_length": 0.0}
  generate = functools.partial(rollout, net, params, max_new_tokens=config.rollout.max_new_tokens,
                               tok=tok, stops=stops)
  for index, (batch, real) in enumerate(wrapped_batches(arrays, size)):
    start = index * size
    _, greedy = generate(batch, sampling_params=SamplingParams(temperature=0.0), rng=rng)
    for problem, text in zip(problems[start:start + real],
                             response_texts(tok, greedy[:real], stops)):
      totals["true_reward"] += synthetic_tasks.exact_match_reward(problem, text)
      totals["format_reward"] += synthetic_tasks.format_reward(problem, text)
    totals["response_length"] += float((greedy[:real] >= 0).sum())
    sampled, _ = generate(batch, sampling_params=sampling(config),
                          rng=jax.random.fold_in(rng, start))
    kl = _sequence_kl(net, params, reference, reference_params, sampled)
    totals["kl_to_reference"] += float(np.asarray(kl)[:real].sum())
  return {name: value / len(problems) for name, value in totals.items()}


def ranking_accuracy(scores: np.ndarray, correct: np.ndarray, log_probs: np.ndarray | None = None,
                     kl_coefs: tuple[float, ...] = ()) -> dict[str, float]:
  """How well scores separate right replies from wrong ones, and what a policy optimized on them
  would answer.

  Args:
    scores: [n, r] a reward model's scores of r replies to each of n prompts.
    correct: [n, r] 1 where a reply is right.
    log_probs: [n, r] the sampling policy's log-probability of each reply (needed by kl_coefs).
    kl_coefs: KL weights beta to pick under (below).
  Returns:
    {"within_prompt_accuracy": over every (right, wrong) pair of replies to the same prompt, the
     fraction where the right one scores higher (ties count half) -- the ranking a policy
     trained on the scores learns from; "auc": the same over all pairs, across prompts too;
     "within_prompt_pairs": how many pairs the first counts} (NaN where there is no pair), and
    the true reward of picking one reply per prompt: "sampled" (any reply: the mean),
    "best_of_n" (the top-scored one, the first on ties), "oracle_best_of_n" (a right one where
    there is one); with log_probs, "mode_of_n" (the policy's likeliest reply: about its greedy
    one) and for each beta in kl_coefs "best_of_n_at_kl_coef_{beta}" (the reply maximizing
    log_prob + score / beta). PPO with KL weight beta moves the policy toward pi * exp(score /
    beta), whose likeliest reply among the samples is that last pick: where it beats mode_of_n,
    PPO at that beta can raise the true reward of greedy replies; best_of_n is its beta -> 0 limit.
  """
  scores, correct = np.asarray(scores, np.float64), np.asarray(correct) > 0
  if kl_coefs and log_probs is None:
    raise ValueError("kl_coefs: picking under a KL weight needs the replies' log_probs")

  def wins(right, wrong):  # [a], [b] -> (sum of wins, count) over the a x b pairs.
    diff = right[:, None] - wrong[None, :]
    return float((diff > 0).sum() + 0.5 * (diff == 0).sum()), diff.size

  def picked(values):  # [n, r] -> the true reward of each prompt's top-valued reply, averaged.
    return float(correct[np.arange(len(correct)), values.argmax(axis=1)].mean())

  within, pairs = 0.0, 0
  for row_scores, row_correct in zip(scores, correct):
    won, count = wins(row_scores[row_correct], row_scores[~row_correct])
    within, pairs = within + won, pairs + count
  won, count = wins(scores[correct], scores[~correct])
  found = {"within_prompt_accuracy": within / pairs if pairs else float("nan"),
           "auc": won / count if count else float("nan"), "within_prompt_pairs": float(pairs),
           "sampled": float(correct.mean()), "best_of_n": picked(scores),
           "oracle_best_of_n": float(correct.any(axis=1).mean())}
  if log_probs is not None:
    log_probs = np.asarray(log_probs, np.float64)
    found["mode_of_n"] = picked(log_probs)
    for beta in kl_coefs:
      found[f"best_of_n_at_kl_coef_{beta:g}"] = picked(log_probs + scores / beta)
  return found


def reward_model_scores(reward_model, params, batch) -> jax.Array:
  """[b] a reward model's score of each `sequences` row: it reads the whole sequence and is read
  at the response's last token."""
  scores = reward_model.apply({"params": params}, batch["tokens"], batch["positions"],
                              batch["segment_ids"])
  return objectives.last_token_values(scores, batch["response_mask"])


_reward_scores = jax.jit(reward_model_scores, static_argnames=("reward_model",))


def reward_model_ranking(net, params, reward_model, reward_params, tok, problems, *, config,
                         num_replies: int, rng, kl_coefs: tuple[float, ...] = ()) -> dict[str, float]:
  """`ranking_accuracy` of a reward model on a policy's own replies: num_replies sampled (with
  rollout.* settings) for each problem, each checked by the task, with the policy's
  log-probabilities when kl_coefs are given. This, not the accuracy on the reward model's
  held-out pairs, says whether PPO against it can raise the true reward: PPO learns from how the
  scores rank the replies it samples, and best_of_n_at_kl_coef_* says at which KL weight.

  Args:
    net, params: the policy (a Transformer); reward_model, reward_params: a RewardModel.
    problems: synthetic_tasks.Problem list; config: rollout.* and model.max_seq_len.
  """
  scores, correct, log_probs = [], [], []
  for rows, texts, problem_rows in sampled_batches(
      net, params, tok, problems, num_replies=num_replies, sampling_params=sampling(config),
      max_new_tokens=config.rollout.max_new_tokens, batch_size=config.rollout.eval_batch_size,
      rng=rng, field="rollout.max_new_tokens"):
    scores.append(np.asarray(_reward_scores(reward_model, reward_params, rows))[:len(texts)])
    if kl_coefs:
      log_probs.append(np.asarray(sequence_log_probs(net, params, rows))[:len(texts)])
    correct.append([synthetic_tasks.exact_match_reward(problems[i], text)
                    for i, text in zip(problem_rows, texts)])

  def by_prompt(parts):  # Batches of rows -> [num problems, num_replies].
    return np.concatenate(parts).reshape(-1, num_replies)

  return ranking_accuracy(by_prompt(scores), by_prompt(correct),
                          by_prompt(log_probs) if kl_coefs else None, kl_coefs)


def build_rl_task(config, workdir: str, resuming: bool, *, param_spec, loss_fn, experience,
                  policy_and_reference, repeat: int, rewards) -> Task:
  """The Task of an on-policy stage: batches of the task's training prompts, a rollout before
  every step, and the held-out evaluation of `evaluate_policy` (eval/true_reward, ...) at eval
  time.

  Args:
    policy_and_reference: the two Transformers (params "policy" and "reference").
    repeat: responses sampled per prompt.
    rewards: (Problem, reply text) -> float, run on the host for each response into the batch's
      "scores"; None where the step scores responses itself (a reward model). Either way the
      batch's TRUE_REWARD holds each response's exact-match reward, for the metrics.
  """
  if jax.process_count() > 1:
    raise ConfigError("family", f"{config.family} runs on one host for now: its rollouts compute "
                      "rewards on the host that samples them")
  train_problems, eval_problems = llm.task_problems(config)
  texts = [data_lib.Document("", p.prompt) for p in train_problems]  # For a tokenizer made here.
  tok = llm.tokenizer_for(config, workdir, texts, resuming)
  stops = end_of_turn(tok)
  width = prompt_width(config, tok)
  train_arrays = prompt_arrays(encode_prompts(tok, train_problems), width, tok.pad_id)
  require(len(train_problems) >= config.train.batch_size, "task.num_train",
          f"{len(train_problems)} prompts, fewer than train.batch_size={config.train.batch_size}")
  policy, reference = policy_and_reference
  sampling_params = sampling(config)

  def rollout_fn(params, prompts, rng):
    batch, responses = rollout(policy, params["policy"], prompts, sampling_params=sampling_params,
                               max_new_tokens=config.rollout.max_new_tokens, tok=tok, stops=stops,
                               rng=rng, repeat=repeat)
    batch = jax.device_get(batch)
    problems = [train_problems[i] for i in np.repeat(prompts["problem_index"], repeat)]
    texts = response_texts(tok, responses, stops)
    # The task's own check of every response, logged beside what the stage optimizes (a reward
    # model's score can rise while this falls: over-optimization, Gao et al., 2022).
    batch[TRUE_REWARD] = np.array([synthetic_tasks.exact_match_reward(problem, text)
                                   for problem, text in zip(problems, texts)], np.float32)
    if rewards is not None:
      batch["scores"] = np.array([rewards(problem, text) for problem, text in
                                  zip(problems, texts)], np.float32)
    return batch

  def on_eval(params, step):
    del step
    found = evaluate_policy(policy, params["policy"], reference, params["reference"], tok,
                            eval_problems, config=config, rng=rng_for(config.seed, "eval"))
    return {f"eval/{name}": value for name, value in found.items()}

  return Task(params=param_spec, loss_fn=loss_fn,
              train_data=data_lib.train_dataset(train_arrays, batch_size=config.train.batch_size,
                                                seed=config.seed),
              eval_data=lambda: iter(()), eval_metrics=lambda totals: {},
              throughput_unit="examples", units_per_example=1, on_eval=on_eval,
              rollout=rollout_fn, experience=experience)
