"""The alignment stages on tiny models: SFT counts only the assistant's tokens; DPO starts at log 2
and trains only its policy; the reward model reads each response's last token; PPO's experience
equals a numpy computation; stages start from earlier ones through the real loop and leave the
frozen models alone; rollouts compile once; bad stage configs fail naming the field before
anything compiles."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import data, families, parallel, partition
from gen_jax.config import ConfigError
from gen_jax.data import synthetic_tasks
from gen_jax.families import alignment, dpo, grpo, llm, llm_sources, ppo, reward, rl
from gen_jax.models import RewardModel, Transformer
from gen_jax.sample import SampleRequest, sample as sample_workdir
from gen_jax.train import abstract_train_state, train_and_evaluate, validate
from gen_jax.train.state import learning_rate_schedule, rng_for
from gen_jax.train.step import make_train_step
from gen_jax.train.workdir import load_workdir_params
from tests.conftest import checkpoint_tree, tiny_config

# One worker runs this module, so the SFT and reward model stages are trained once.
pytestmark = pytest.mark.xdist_group("alignment_stages")
SHORT = {"train.num_steps": 3, "train.eval_every": 3, "checkpoint.every_steps": 3,
         "train.eval_max_batches": 1}


@pytest.fixture(scope="module")
def tok():
  problems = synthetic_tasks.arithmetic_problems(200, seed=1)
  texts = [m["content"] for chat in synthetic_tasks.demonstrations(problems) for m in chat]
  return data.train_bpe(texts, vocab_size=512)


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)


def test_sft_loss_counts_the_assistant_tokens_only(tok):
  config = tiny_config("configs/llm/sft.py", **{"data.source": "synthetic:arithmetic"})
  chats = synthetic_tasks.demonstrations(synthetic_tasks.arithmetic_problems(12, seed=3))
  batch = {k: jnp.asarray(v) for k, v in llm._packed_chats(tok, chats, 64, "data.source").items()}
  net = llm.model(config)
  params = net.init(jax.random.key(0), batch["tokens"][:, :-1])["params"]
  loss_fn = llm.make_loss_fn(config, jnp.ones((config.model.vocab_size,)))
  loss_sum, sums = loss_fn(params, batch, jax.random.key(0))

  log_probs = _log_softmax(net.apply({"params": params}, batch["tokens"][:, :-1],
                                     batch["positions"][:, :-1], batch["segment_ids"][:, :-1]))
  tokens, segments, mask = (np.asarray(batch[k]) for k in ("tokens", "segment_ids", "loss_mask"))
  expected, counted, same_segment = 0.0, 0, 0
  for w in range(tokens.shape[0]):
    for j in range(tokens.shape[1] - 1):
      if segments[w, j + 1] and segments[w, j + 1] == segments[w, j]:
        same_segment += 1
        if mask[w, j + 1]:
          expected -= log_probs[w, j, tokens[w, j + 1]]
          counted += 1
  # "The answer is N.<|im_end|>\n" per conversation: the prompt's tokens are left out.
  assert float(sums["weight"]) == counted and counted < same_segment / 2
  np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-5)
  assert tok.decode(tokens[0][mask[0] == 1]).startswith("The answer is")


def _pair_batch(config, tok, num_pairs: int = 8):
  pairs = synthetic_tasks.preference_pairs(synthetic_tasks.arithmetic_problems(num_pairs, seed=5),
                                           seed=0)
  arrays = alignment.pair_arrays(tok, pairs, config.model.max_seq_len, "data.source")
  return {**{k: jnp.asarray(v) for k, v in arrays.items()},
          data.EXAMPLE_WEIGHT: jnp.ones((num_pairs,), jnp.float32)}


def test_dpo_starts_at_log_2_and_its_reference_never_changes(tok):
  config = tiny_config("configs/llm/dpo.py", **{"optimizer.learning_rate": 1e-2})
  validate(config)
  mesh = parallel.make_mesh(config.mesh)
  layout = abstract_train_state(dpo.param_spec(config), config, mesh)
  assert {p[0] for p in partition.flatten(layout.abstract.params)} == {"policy"}
  assert {p[0] for p in partition.flatten(layout.abstract_frozen)} == {"reference"}
  with jax.set_mesh(mesh):
    state, frozen = layout.create(rng_for(config.seed, "init"))
  reference_before = jax.device_get(frozen)
  # Policy and reference start from one init: every implicit reward is 0 and the loss is log 2.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params)["policy"],
               reference_before["reference"])
  batch = _pair_batch(config, tok)
  step = jax.jit(make_train_step(dpo.make_loss_fn(config), layout.tx,
                                 learning_rate_schedule(config), 1))
  with jax.set_mesh(mesh):
    state, first = step(state, frozen, batch, jax.random.key(0))
    for _ in range(3):
      state, metrics = step(state, frozen, batch, jax.random.key(0))
  np.testing.assert_allclose(float(first["loss"]), math.log(2), rtol=1e-6)
  assert float(first["reward_margin"]) == 0.0
  assert float(metrics["loss"]) < math.log(2) and float(metrics["reward_margin"]) > 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(frozen), reference_before)


def test_dpo_with_logit_chunks_gives_the_same_loss_and_gradients(tok):
  """objective.logit_chunks scores both responses a slice of positions at a time (the whole
  [rows, t, vocab] logits never exist): the same loss, sums and policy gradients."""
  whole = tiny_config("configs/llm/dpo.py", **{"dpo.chosen_nll_weight": 0.5})
  chunks = whole.model.max_seq_len // 8
  sliced = tiny_config("configs/llm/dpo.py", **{"dpo.chosen_nll_weight": 0.5,
                                               "objective.logit_chunks": chunks})
  batch = _pair_batch(whole, tok, num_pairs=4)
  policy, _ = alignment.policy_and_reference(whole)
  params = {dpo.POLICY: policy.init(jax.random.key(5), batch["chosen_tokens"][:, :-1])["params"],
            dpo.REFERENCE: policy.init(jax.random.key(6), batch["chosen_tokens"][:, :-1])["params"]}
  (loss, sums), grads = jax.value_and_grad(dpo.make_loss_fn(whole), has_aux=True)(
      params, batch, None)
  (chunked_loss, chunked_sums), chunked_grads = jax.value_and_grad(
      dpo.make_loss_fn(sliced), has_aux=True)(params, batch, None)
  np.testing.assert_allclose(chunked_loss, loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               (chunked_sums, chunked_grads[dpo.POLICY]), (sums, grads[dpo.POLICY]))
  with pytest.raises(ConfigError, match="objective.logit_chunks: must be 0 or a positive divisor"):
    validate(tiny_config("configs/llm/dpo.py", **{"objective.logit_chunks": 7}))


def test_dpo_chosen_nll_weight_adds_the_chosen_responses_per_token_nll(tok):
  """RPO: each pair's loss gains weight * (-log pi(chosen)) / (chosen's response tokens)."""
  weight = 0.5
  plain = tiny_config("configs/llm/dpo.py")
  with_nll = tiny_config("configs/llm/dpo.py", **{"dpo.chosen_nll_weight": weight})
  batch = _pair_batch(plain, tok, num_pairs=4)
  policy, _ = alignment.policy_and_reference(plain)
  params = policy.init(jax.random.key(3), batch["chosen_tokens"][:, :-1])["params"]
  # A reference different from the policy, so the DPO part is not log 2 everywhere.
  reference = policy.init(jax.random.key(4), batch["chosen_tokens"][:, :-1])["params"]
  both = {dpo.POLICY: params, dpo.REFERENCE: reference}
  plain_loss, plain_sums = dpo.make_loss_fn(plain)(both, batch, None)
  loss, sums = dpo.make_loss_fn(with_nll)(both, batch, None)
  # The chosen responses' log-probs, independently: log-softmax at each response target.
  logits = policy.apply({"params": params}, batch["chosen_tokens"][:, :-1],
                        batch["chosen_positions"][:, :-1], batch["chosen_segment_ids"][:, :-1])
  log_probs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)), np.float64)
  targets = np.asarray(batch["chosen_tokens"])[:, 1:]
  mask = np.asarray(batch["chosen_loss_mask"])[:, 1:]
  picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  nll_per_token = -(picked * mask).sum(-1) / mask.sum(-1)
  np.testing.assert_allclose(float(loss) - float(plain_loss), weight * nll_per_token.sum(),
                             rtol=1e-4)
  np.testing.assert_allclose(float(sums["chosen_nll_per_token"]), nll_per_token.sum(), rtol=1e-4)
  assert float(plain_sums["reward_margin"]) == float(sums["reward_margin"])


def test_reward_is_the_score_at_each_responses_last_token(tok):
  config = tiny_config("configs/llm/reward.py")
  batch = _pair_batch(config, tok, num_pairs=4)
  net = reward.model(config)
  params = net.init(jax.random.key(1), batch["chosen_tokens"][:, :-1])["params"]
  assert set(params) == {"backbone", "head"} and "lm_head" not in params["backbone"]
  chosen, rejected = reward.rewards(net, params, batch)
  for name, values in (("chosen", chosen), ("rejected", rejected)):
    scores = net.apply({"params": params}, batch[f"{name}_tokens"][:, :-1],
                       batch[f"{name}_positions"][:, :-1], batch[f"{name}_segment_ids"][:, :-1])
    mask = np.asarray(batch[f"{name}_loss_mask"])[:, :-1]
    last = [max(np.flatnonzero(row)) for row in mask]
    np.testing.assert_allclose(values, [scores[i, j] for i, j in enumerate(last)], rtol=1e-6)
  loss_sum, sums = reward.make_loss_fn(config)(params, batch, jax.random.key(0))
  margins = np.asarray(chosen - rejected, np.float64)
  np.testing.assert_allclose(float(loss_sum), np.log1p(np.exp(-margins)).sum(), rtol=1e-5)
  assert float(sums["accuracy"]) == (margins > 0).sum()
  # reward.center_weight adds weight * (r_chosen + r_rejected)^2 per pair.
  centered = tiny_config("configs/llm/reward.py", **{"reward.center_weight": 0.25})
  centered_sum, _ = reward.make_loss_fn(centered)(params, batch, jax.random.key(0))
  pair_sums = np.asarray(chosen + rejected, np.float64)
  np.testing.assert_allclose(float(centered_sum) - float(loss_sum), 0.25 * (pair_sums ** 2).sum(),
                             rtol=1e-4)


@pytest.fixture(scope="session")  # Once per worker; the xdist group keeps these tests on one.
def stages(tmp_path_factory):
  """(SFT workdir, reward model workdir): SFT on the synthetic task, a reward model from it."""
  root = tmp_path_factory.mktemp("stages")
  sft, rm = str(root / "sft"), str(root / "rm")
  train_and_evaluate(tiny_config("configs/llm/sft.py", **SHORT,
                                 **{"data.source": "synthetic:arithmetic"}), sft)
  metrics = train_and_evaluate(tiny_config("configs/llm/reward.py", **SHORT,
                                           **{"init.source": f"workdir:{sft}"}), rm)
  assert 0 <= metrics["eval/accuracy"] <= 1 and math.isfinite(metrics["eval/loss"])
  return sft, rm


def _host(params):
  return jax.tree.map(np.asarray, jax.device_get(params))


def test_reward_model_and_dpo_start_from_sft_and_keep_it_frozen(stages, tmp_path):
  sft, rm = stages
  _, sft_params = load_workdir_params(sft)
  source = {"init.source": f"workdir:{sft}"}
  start = reward.param_spec(tiny_config("configs/llm/reward.py", **source)).pretrained()
  # The body starts as the SFT model (its output layer has no place in a reward model).
  assert set(start) == {("backbone",) + p for p in partition.flatten(sft_params)
                        if p[0] != "lm_head"}
  _, rm_params = load_workdir_params(rm)
  assert not np.array_equal(rm_params["backbone"]["final_norm"]["scale"],
                            sft_params["final_norm"]["scale"])  # It trained.

  dpo_dir = str(tmp_path / "dpo")
  metrics = train_and_evaluate(tiny_config("configs/llm/dpo.py", **SHORT, **source), dpo_dir)
  assert {"eval/reward_accuracy", "eval/reward_margin", "train/chosen_reward"} <= set(metrics)
  _, params = load_workdir_params(dpo_dir)
  jax.tree.map(np.testing.assert_array_equal, _host(params["reference"]), _host(sft_params))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), params["policy"], params["reference"])
  assert all(jax.tree.leaves(changed))
  # The policy is a language model: sampling (and a later stage, export) take it.
  reply = sample_workdir(dpo_dir, SampleRequest(prompt="What is 3 + 4?", max_new_tokens=4,
                                                chat=True))
  assert isinstance(reply, str)


def test_policy_pairs_reject_the_starting_models_own_mistakes(stages, tmp_path):
  sft, _ = stages
  config = tiny_config("configs/llm/dpo.py", **SHORT, **{
      "init.source": f"workdir:{sft}", "pairs.rejected": "policy", "pairs.policy_replies": 2,
      "task.num_train": 48, "task.num_eval": 16})
  train_problems, _ = llm.task_problems(config)
  train_pairs, eval_pairs = alignment.preference_pairs(config)
  assert len(train_pairs) == 48 and len(eval_pairs) == 16
  rules = synthetic_tasks.preference_pairs(train_problems, seed=config.task.seed)
  replies = alignment.policy_replies(config, train_problems, held_out=False)
  assert replies == alignment.policy_replies(config, train_problems, held_out=False)  # Seeded.
  own = 0
  for problem, pair, rule_pair, sampled in zip(train_problems, train_pairs, rules, replies):
    assert len(sampled) == 2 and not synthetic_tasks.exact_match_reward(problem, pair.rejected)
    wrong = [r for r in sampled if not synthetic_tasks.exact_match_reward(problem, r)]
    assert pair.rejected == (wrong[0] if wrong else rule_pair.rejected)
    own += bool(wrong)
  assert own > 0  # A 3-step SFT model errs, so its own replies are rejected.
  metrics = train_and_evaluate(config, str(tmp_path / "dpo"))
  assert math.isfinite(metrics["eval/loss"])


def _ppo_config(stages, **overrides):
  sft, rm = stages
  return tiny_config("configs/llm/ppo.py", **SHORT, **{
      "init.source": f"workdir:{sft}", "ppo.reward_model": f"workdir:{rm}", **overrides})


def _numpy_gae(rewards, values, mask, gamma, lam):
  advantages = np.zeros_like(rewards)
  for row in range(rewards.shape[0]):
    following, next_value = 0.0, 0.0
    for t in reversed(range(rewards.shape[1])):
      if not mask[row, t]:
        continue
      delta = rewards[row, t] + gamma * next_value - values[row, t]
      following = delta + gamma * lam * following
      advantages[row, t], next_value = following, values[row, t]
  return advantages, (advantages + values) * mask


def test_mirrored_pairs_join_the_training_pairs_only():
  fields = {"task.num_train": 48, "task.num_eval": 16}
  train, held_out = alignment.preference_pairs(tiny_config("configs/llm/reward.py", **fields))
  config = tiny_config("configs/llm/reward.py", **fields, **{"pairs.mirror": True})
  mirrored_train, mirrored_held_out = alignment.preference_pairs(config)
  _, held_out_problems = llm.task_problems(config)
  extra = synthetic_tasks.mirrored_pairs(
      train, max_digits=config.task.max_digits,
      excluded=frozenset(p.prompt for p in held_out_problems))
  assert len(extra) > len(train) // 2
  assert not {m.prompt[0]["content"] for m in extra} & {p.prompt for p in held_out_problems}
  assert mirrored_train == train + extra and mirrored_held_out == held_out


def test_ppo_experience_equals_numpy(stages, tmp_path):
  """Rewards (the reward model's score at the last token, -kl_coef * (log pi - log pi_ref) at
  every token), GAE and whitening, from the models' own outputs."""
  config = _ppo_config(stages, **{"ppo.gamma": 0.9, "ppo.lam": 0.8, "ppo.kl_coef": 0.3})
  task = ppo.build_task(config, str(tmp_path))
  layout = abstract_train_state(task.params, config, parallel.make_mesh(config.mesh))
  state, frozen = layout.create(rng_for(config.seed, "init"))
  params = partition.merge_params(state.params, frozen)
  prompts = next(iter(task.train_data))
  batch = task.rollout(params, prompts, jax.random.key(0))
  out, extra, metrics = jax.jit(task.experience)(params, state.extra, batch, jax.random.key(1))

  policy, reference, reward_model, value = ppo._models(config)
  tokens, positions, segments = batch["tokens"], batch["positions"], batch["segment_ids"]
  inputs = (tokens[:, :-1], positions[:, :-1], segments[:, :-1])
  targets, mask = tokens[:, 1:], batch["response_mask"][:, 1:].astype(np.float64)

  def log_probs(net, net_params):
    logits = _log_softmax(net.apply({"params": net_params}, *inputs))
    return np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]

  kl = (log_probs(policy, params["policy"]) - log_probs(reference, params["reference"])) * mask
  scores_all = np.asarray(reward_model.apply({"params": params["reward_model"]}, tokens,
                                             positions, segments))
  values = np.asarray(value.apply({"params": params["value"]}, *inputs), np.float64) * mask
  rewards = -0.3 * kl
  for row in range(len(tokens)):
    response = np.flatnonzero(batch["response_mask"][row])
    rewards[row, response[-1] - 1] += scores_all[row, response[-1]]  # Last target, last token.
  advantages, returns = _numpy_gae(rewards, values, mask, 0.9, 0.8)
  mean = advantages[mask > 0].mean()
  whitened = (advantages - mean) / np.sqrt(advantages[mask > 0].var() + 1e-8) * mask
  np.testing.assert_allclose(np.asarray(out["returns"]), returns, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(np.asarray(out["advantages"]), whitened, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(float(metrics["kl"]), kl.sum(1).mean(), rtol=1e-4, atol=1e-6)
  # The rollouts' own exact-match rewards, checked here from their text.
  tokenizer = llm_sources.load(f"workdir:{stages[0]}", "init.source").tokenizer
  problems = llm.task_problems(config)[0]
  prompt_width = batch["tokens"].shape[1] - config.rollout.max_new_tokens
  responses = np.where(batch["response_mask"][:, prompt_width:] > 0,
                       batch["tokens"][:, prompt_width:], -1)
  replies = rl.response_texts(tokenizer, responses, rl.end_of_turn(tokenizer))
  exact = [synthetic_tasks.exact_match_reward(problems[i], text)
           for i, text in zip(prompts["problem_index"], replies)]
  np.testing.assert_allclose(float(metrics["true_reward"]), np.mean(exact), rtol=1e-6)
  assert float(extra["kl_coef"]) == np.float32(0.3)  # Fixed: ppo.kl_target is 0.
  assert mask.sum() > 0 and np.all(batch["response_mask"][:, :batch["tokens"].shape[1] - 8] == 0)


@pytest.mark.parametrize("family", ["ppo", "grpo"])
def test_ppo_and_grpo_with_logit_chunks_give_the_same_experience_loss_and_gradients(
    stages, tmp_path, family):
  """objective.logit_chunks: the policy's and the reference's log-probabilities, the entropy and
  (PPO, its value head sharing the policy) the values come from slices of the positions, the
  last slice padded when the count does not divide the scored length: the same experience,
  loss, sums and gradients as the whole logits'."""
  sft, rm = stages
  module = {"ppo": ppo, "grpo": grpo}[family]
  overrides = {"init.source": f"workdir:{sft}",
               **({"ppo.reward_model": f"workdir:{rm}", "ppo.value_model": "shared"}
                  if family == "ppo" else {"grpo.group_size": 2})}
  whole = tiny_config(f"configs/llm/{family}.py", **SHORT, **overrides)
  task = module.build_task(whole, str(tmp_path))
  layout = abstract_train_state(task.params, whole, parallel.make_mesh(whole.mesh))
  state, frozen = layout.create(rng_for(whole.seed, "init"))
  params = partition.merge_params(state.params, frozen)
  batch = task.rollout(params, next(iter(task.train_data)), jax.random.key(0))
  scored = batch["tokens"].shape[1] - 1
  chunks = next(c for c in (3, 4, 5, 7) if scored % c)  # A count that needs padding.
  sliced = tiny_config(f"configs/llm/{family}.py", **SHORT, **overrides,
                       **{"objective.logit_chunks": chunks})
  results = []
  for config in (whole, sliced):
    out, _, metrics = jax.jit(module.make_experience_fn(config))(params, state.extra, batch,
                                                                  jax.random.key(1))
    (loss, sums), grads = jax.value_and_grad(module.make_loss_fn(config), has_aux=True)(
        params, out, None)
    results.append((out, metrics, loss, sums, grads))
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # noqa: E731
  jax.tree.map(close, results[1], results[0])
  assert float(results[0][3]["entropy"]) > 0


def test_ppo_with_reward_functions_scores_each_rollout_by_them(stages, tmp_path, monkeypatch):
  """ppo.reward_functions instead of a reward model: no reward model params, and with no KL
  penalty and gamma = lam = 1 every response token's return is its reply's score. The score
  here is the reply's length (a function registered for the test), so it differs between rows."""
  monkeypatch.setitem(synthetic_tasks.REWARD_FUNCTIONS, "reply_length",
                      lambda problem, reply: len(reply) / 10)
  config = tiny_config("configs/llm/ppo.py", **SHORT, **{
      "init.source": f"workdir:{stages[0]}", "ppo.reward_functions": "reply_length",
      "ppo.value_model": "shared", "ppo.kl_coef": 0.0, "ppo.gamma": 1.0, "ppo.lam": 1.0,
      "ppo.whiten_advantages": False})
  validate(config)
  task = ppo.build_task(config, str(tmp_path))
  layout = abstract_train_state(task.params, config, parallel.make_mesh(config.mesh))
  state, frozen = layout.create(rng_for(config.seed, "init"))
  params = partition.merge_params(state.params, frozen)
  assert set(params) == {"policy", "reference", "value_head"}
  batch = task.rollout(params, next(iter(task.train_data)), jax.random.key(0))
  tokenizer = llm_sources.load(f"workdir:{stages[0]}", "init.source").tokenizer
  prompt_width = batch["tokens"].shape[1] - config.rollout.max_new_tokens
  responses = np.where(batch["response_mask"][:, prompt_width:] > 0,
                       batch["tokens"][:, prompt_width:], -1)
  lengths = [len(r) / 10 for r in rl.response_texts(tokenizer, responses,
                                                     rl.end_of_turn(tokenizer))]
  np.testing.assert_allclose(batch["scores"], lengths, rtol=1e-6)
  assert len(set(lengths)) > 1, lengths
  out, _, metrics = jax.jit(task.experience)(params, state.extra, batch, jax.random.key(1))
  mask = np.asarray(batch["response_mask"])[:, 1:] > 0
  returns = np.asarray(out["returns"])
  for row in range(len(mask)):
    np.testing.assert_allclose(returns[row][mask[row]], lengths[row], rtol=1e-5, atol=1e-5)
  assert float(metrics["reward"]) == pytest.approx(float(np.mean(lengths)))


def test_ppo_and_grpo_train_through_the_loop_leaving_reference_and_reward_model_alone(
    stages, tmp_path):
  sft, rm = stages
  _, sft_params = load_workdir_params(sft)
  _, rm_params = load_workdir_params(rm)
  workdir = str(tmp_path / "ppo")
  # An adaptive KL coefficient with a short horizon moves at once, and is carried between steps;
  # the value head shares the policy's body (test_ppo_experience_equals_numpy: a separate one).
  metrics = train_and_evaluate(_ppo_config(stages, **{
      "ppo.kl_target": 1.0, "ppo.kl_horizon": 16.0, "train.log_every": 1,
      "ppo.value_model": "shared"}), workdir)
  for name in ("reward", "kl", "entropy", "clip_fraction", "approx_kl", "value_loss",
               "value_explained_variance", "response_length"):
    assert math.isfinite(metrics[f"train/{name}"]), name
  assert 0 <= metrics["train/true_reward"] <= 1
  assert 0 <= metrics["eval/true_reward"] <= 1 and math.isfinite(metrics["eval/kl_to_reference"])
  assert metrics["train/kl_coef"] < 0.05  # Lowered at steps 1 and 2 (KL far below its target).
  _, params = load_workdir_params(workdir)
  assert set(params) == {"policy", "reference", "reward_model", "value_head"}
  jax.tree.map(np.testing.assert_array_equal, _host(params["reference"]), _host(sft_params))
  jax.tree.map(np.testing.assert_array_equal, _host(params["reward_model"]), _host(rm_params))
  # The checkpoint holds what trains: the policy and the value head; and the KL coefficient.
  saved = checkpoint_tree(workdir, 3)
  assert {p[1] for p in saved if p[0] == "params"} == {"policy", "value_head"}
  assert ("extra", "kl_coef") in saved

  metrics = train_and_evaluate(tiny_config("configs/llm/grpo.py", **SHORT, **{
      "init.source": f"workdir:{sft}", "grpo.group_size": 2}), str(tmp_path / "grpo"))
  for name in ("reward", "reward_std_in_group", "solved_groups", "kl", "kl_k3", "clip_fraction"):
    assert math.isfinite(metrics[f"train/{name}"]), name
  assert 0 <= metrics["train/true_reward"] <= metrics["train/reward"]  # Format adds to exact.
  assert 0 <= metrics["eval/true_reward"] <= 1 and metrics["eval/response_length"] > 0


def test_rollouts_and_steps_compile_once(stages, tmp_path):
  """Steps after the first sample, score and update without compiling anything again."""
  from gen_jax.sampling import lm as sampling_lm
  sft, _ = stages
  config = tiny_config("configs/llm/grpo.py", **{"init.source": f"workdir:{sft}",
                                                 "train.epochs_per_batch": 2})
  task = grpo.build_task(config, str(tmp_path))
  mesh = parallel.make_mesh(config.mesh)
  layout = abstract_train_state(task.params, config, mesh)
  with jax.set_mesh(mesh):  # As the loop does: the state keeps its shardings from step to step.
    state, frozen = layout.create(rng_for(config.seed, "init"))
    step = jax.jit(make_train_step(task.loss_fn, layout.tx, learning_rate_schedule(config), 1,
                                   experience=task.experience, epochs=2), donate_argnums=0,
                   out_shardings=(jax.tree.map(lambda x: x.sharding, layout.abstract), None))
    data_iter, sizes = iter(task.train_data), []
    for index in range(3):
      batch = task.rollout(partition.merge_params(state.params, frozen), next(data_iter),
                           jax.random.key(index))
      state, metrics = step(state, frozen, parallel.shard_batch(batch, mesh), jax.random.key(0))
      sizes.append((sampling_lm._generate._cache_size(), rl.sequences._cache_size(),
                    step._cache_size()))
  assert sizes[0] == sizes[1] == sizes[2] and sizes[0][2] == 1, sizes
  assert int(state.step) == 3 and math.isfinite(float(metrics["loss"]))


def test_ppo_on_an_eight_device_mesh_equals_one_device(stages, tmp_path):
  """The policy samples from its sharded params, and PPO's experience (policy, reference, reward
  model and value model, all sharded) and update on a data x fsdp mesh compute what one device
  computes on the same rollouts."""
  results, rollouts = [], None
  for index, mesh_fields in enumerate(({"mesh.num_devices": 1},
                                       {"mesh.data": 2, "mesh.fsdp": 4})):
    config = _ppo_config(stages, **mesh_fields)
    task = ppo.build_task(config, str(tmp_path / str(index)))
    mesh = parallel.make_mesh(config.mesh)
    layout = abstract_train_state(task.params, config, mesh)
    with jax.set_mesh(mesh):
      state, frozen = layout.create(rng_for(config.seed, "init"))
      sampled = task.rollout(partition.merge_params(state.params, frozen),
                             next(iter(task.train_data)), jax.random.key(0))
      rollouts = rollouts or sampled  # Both meshes step on the one-device rollouts.
      assert sampled["tokens"].shape == rollouts["tokens"].shape
      assert np.asarray(sampled["response_mask"]).sum() > 0
      step = jax.jit(make_train_step(task.loss_fn, layout.tx, learning_rate_schedule(config), 1,
                                     experience=task.experience,
                                     epochs=config.train.epochs_per_batch),
                     out_shardings=(jax.tree.map(lambda x: x.sharding, layout.abstract), None))
      state, metrics = step(state, frozen, parallel.shard_batch(rollouts, mesh), jax.random.key(1))
    if index:  # Sharded as the rules say: the policy's MLP kernels split over fsdp.
      kernel = state.params["policy"]["layers"]["mlp"]["wi_gate"]["kernel"]
      assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
    results.append((float(metrics["loss"]), float(metrics["reward"]), _host(state.params)))
  (loss1, reward1, params1), (loss8, reward8, params8) = results
  np.testing.assert_allclose(reward8, reward1, rtol=1e-5)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4), params8, params1)


def test_ranking_accuracy_counts_right_over_wrong_pairs():
  scores = np.array([[3.0, 1.0, 2.0], [0.0, 0.0, 5.0], [1.0, 1.0, 4.0], [7.0, 8.0, 9.0]])
  correct = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
  found = rl.ranking_accuracy(scores, correct)
  # Row 0: 3 beats 1 and 2; row 1: neither 0 beats 5; row 2: 1 ties 1 (a half), loses to 4; row 3
  # has no wrong reply. Across prompts the right {3, 0, 0, 1, 7, 8, 9} meet the wrong {1, 2, 5, 1, 4}.
  assert found["within_prompt_pairs"] == 6
  assert found["within_prompt_accuracy"] == pytest.approx((2 + 0 + 0.5) / 6)
  right, wrong = np.array([3, 0, 0, 1, 7, 8, 9.0]), np.array([1, 2, 5, 1, 4.0])
  diff = right[:, None] - wrong[None]
  assert found["auc"] == pytest.approx(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)
  # Picking a reply per prompt: the top-scored ones are right, wrong, wrong (the 4), right (the 9).
  assert found["best_of_n"] == pytest.approx(2 / 4)
  assert found["sampled"] == pytest.approx(7 / 12) and found["oracle_best_of_n"] == 1.0
  assert math.isnan(rl.ranking_accuracy(scores[3:], correct[3:])["within_prompt_accuracy"])
  # With the policy's log-probabilities: its likeliest replies are wrong, right, wrong, right.
  log_probs = np.log(np.array([[0.2, 0.7, 0.1], [0.3, 0.699, 0.001], [0.1, 0.5, 0.4],
                               [0.5, 0.3, 0.2]]))
  found = rl.ranking_accuracy(scores, correct, log_probs, kl_coefs=(0.1, 1.0, 100.0))
  assert found["mode_of_n"] == pytest.approx(2 / 4)
  # beta 1 picks by log p + score: row 0 reply 0 (-1.6 + 3 beats -0.4 + 1), row 1 reply 1
  # (-0.4 + 0 beats -6.9 + 5), row 2 reply 2 (-0.9 + 4), row 3 reply 2 (-1.6 + 9): right, right,
  # wrong, right -- better than the scores alone or the policy alone.
  assert found["best_of_n_at_kl_coef_1"] == pytest.approx(3 / 4)
  assert found["best_of_n_at_kl_coef_0.1"] == found["best_of_n"]  # Small beta: the scores rule.
  assert found["best_of_n_at_kl_coef_100"] == found["mode_of_n"]  # Large beta: the policy rules.
  assert "mode_of_n" not in rl.ranking_accuracy(scores, correct)
  with pytest.raises(ValueError, match="kl_coefs: .*log_probs"):
    rl.ranking_accuracy(scores, correct, kl_coefs=(1.0,))


def test_reward_model_ranking_scores_the_policys_own_sampled_replies(stages):
  sft, rm = stages
  policy = llm_sources.load(f"workdir:{sft}", "init.source")
  scorer = llm_sources.load_reward_model(f"workdir:{rm}", "ppo.reward_model")
  config = _ppo_config(stages, **{"rollout.eval_batch_size": 4})
  problems = llm.task_problems(config)[0][:6]  # Two batches, the second wrapping around.
  found = rl.reward_model_ranking(
      Transformer(policy.config), policy.params, RewardModel(scorer.config), scorer.params,
      policy.tokenizer, problems, config=config, num_replies=3, rng=jax.random.key(0),
      kl_coefs=(0.5,))
  # The same replies, sampled and checked here: as many (right, wrong) pairs per prompt.
  replies = rl.sampled_replies(Transformer(policy.config), policy.params, policy.tokenizer,
                               problems, num_replies=3, sampling_params=rl.sampling(config),
                               max_new_tokens=config.rollout.max_new_tokens, batch_size=4,
                               rng=jax.random.key(0), field="rollout.max_new_tokens")
  right = [sum(synthetic_tasks.exact_match_reward(p, r) for r in rs)
           for p, rs in zip(problems, replies)]
  assert found["within_prompt_pairs"] == sum(n * (3 - n) for n in right)
  for name in ("within_prompt_accuracy", "auc"):
    assert math.isnan(found[name]) or 0 <= found[name] <= 1
  for name in ("best_of_n", "mode_of_n", "best_of_n_at_kl_coef_0.5"):  # A pick can't beat the oracle.
    assert 0 <= found[name] <= found["oracle_best_of_n"]


def test_reward_ranking_cli_ranks_the_reward_runs_own_sft_model_by_default(stages):
  from gen_jax.eval.reward_ranking import ranking_report, reward_ranking
  sft, rm = stages
  settings = dict(num_replies=3, kl_coefs=(0.5, 2.0), limit=6, prompts_per_call=4)
  found = reward_ranking(f"workdir:{rm}", **settings)
  np.testing.assert_equal(found, reward_ranking(f"workdir:{rm}", f"workdir:{sft}", **settings))
  assert found["prompts"] == 6 and 0 <= found["best_of_n_at_kl_coef_2"] <= found["oracle_best_of_n"]
  report = ranking_report(found, (0.5, 2.0))
  assert report.startswith("6 held-out prompts of the synthetic task, 3 replies each")
  assert ["PPO's", "optimum", "at", "kl_coef", "0.5", f"{found['best_of_n_at_kl_coef_0.5']:.3f}"] in [
      line.split() for line in report.splitlines()]
  with pytest.raises(ConfigError, match=r"--reward_model: .* holds a llm model, not a reward"):
    reward_ranking(f"workdir:{sft}")
  with pytest.raises(ConfigError, match=r"--kl_coefs: must be positive"):
    reward_ranking(f"workdir:{rm}", kl_coefs=(0.0,))


def test_bad_rl_configs_fail_naming_the_field(stages, tmp_path):
  sft, rm = stages
  with pytest.raises(ConfigError, match=r"grpo.reward_functions: .*'exactly'"):
    validate(tiny_config("configs/llm/grpo.py", **{"grpo.reward_functions": "exactly,format"}))
  with pytest.raises(ConfigError, match=r"ppo.reward_model: scores a vocabulary of 512 tokens but "
                     r"the policy has model.vocab_size=600"):
    validate(_ppo_config(stages, **{"init.source": "", "model.vocab_size": 600}))
  with pytest.raises(ConfigError, match=r"ppo.reward_model: .* holds a llm model, not a reward"):
    validate(_ppo_config(stages, **{"ppo.reward_model": f"workdir:{sft}"}))
  with pytest.raises(ConfigError, match=r"init.source: '/no/such/sft' does not exist"):
    validate(_ppo_config(stages, **{"init.source": "workdir:/no/such/sft"}))
  with pytest.raises(ConfigError, match=r"rollout.max_new_tokens: 60 new tokens after prompts"):
    families.get("grpo").build_task(tiny_config("configs/llm/grpo.py", **{
        "rollout.max_new_tokens": 60}), str(tmp_path))


BAD_STAGES = [
    ("configs/llm/dpo.py", {"init.source": "workdir:/no/such/sft"},
     "init.source: '/no/such/sft' does not exist"),
    ("configs/llm/dpo.py", {"dpo.beta": 0.0}, "dpo.beta: must be positive"),
    ("configs/llm/dpo.py", {"dpo.chosen_nll_weight": -1.0}, "dpo.chosen_nll_weight: must be >= 0"),
    ("configs/llm/dpo.py", {"dpo.loss_type": "hinge"}, r"dpo.loss_type: 'hinge' is not one of"),
    ("configs/llm/dpo.py", {"data.source": "chatterbot"}, "data.source: 'chatterbot': use"),
    ("configs/llm/dpo.py", {"pairs.rejected": "sampled"},
     "pairs.rejected: 'sampled': use 'rules' or 'policy'"),
    ("configs/llm/reward.py", {"pairs.rejected": "policy"},
     "pairs.rejected: 'policy' samples init.source's model, and init.source is empty"),
    ("configs/llm/dpo.py", {"pairs.rejected": "policy", "data.source": "/tmp/p.jsonl",
                            "init.source": "workdir:/tmp"},
     "pairs.rejected: 'policy' makes the synthetic task's pairs"),
    ("configs/llm/reward.py", {"pairs.mirror": True, "data.source": "/tmp/p.jsonl"},
     "pairs.mirror: mirrors the synthetic task's training pairs, but data.source='/tmp/p.jsonl'"),
    ("configs/llm/reward.py", {"reward.center_weight": -0.1},
     "reward.center_weight: must be >= 0"),
    ("configs/llm/reward.py", {"data.format": "chat"},
     "data.format: 'chat': a reward run trains on preference pairs"),
    ("configs/llm/reward.py", {"distill.teacher": "workdir:/tmp"},
     "distill.teacher: 'workdir:/tmp': distillation is a stage of its own"),
    ("configs/llm/sft.py", {"data.source": "pydoc"}, "data.source: 'pydoc': with data.format='chat'"),
    ("configs/llm/sft.py", {"data.format": "preference"}, "data.format: 'preference' is not one of"),
    ("configs/llm/sft.py", {"task.max_digits": 0}, "task.max_digits: must be positive"),
    ("configs/llm/grpo.py", {"grpo.group_size": 1}, "grpo.group_size: must be at least 2"),
    ("configs/llm/grpo.py", {"rollout.temperature": 0.0}, "rollout.temperature: must be positive"),
    ("configs/llm/grpo.py", {"data.format": "chat"}, "data.format: 'chat': a grpo run samples"),
    ("configs/llm/ppo.py", {"ppo.reward_model": ""}, "ppo.reward_model: is empty"),
    ("configs/llm/ppo.py", {"ppo.reward_functions": "exact_match", "ppo.reward_model": "workdir:/x"},
     "ppo.reward_functions: 'exact_match' and ppo.reward_model='workdir:/x' both score"),
    ("configs/llm/ppo.py", {"ppo.reward_functions": "exact_match"},
     "ppo.value_model: 'separate' starts the value model from the reward model"),
    ("configs/llm/ppo.py", {"ppo.reward_functions": "exact", "ppo.value_model": "shared"},
     "ppo.reward_functions: unknown reward function 'exact'"),
]


@pytest.mark.parametrize("path,overrides,message", BAD_STAGES,
                         ids=[m.split(":")[0] for _, _, m in BAD_STAGES])
def test_bad_stage_configs_fail_naming_the_field(path, overrides, message):
  with pytest.raises(ConfigError, match=message):
    validate(tiny_config(path, **overrides))

