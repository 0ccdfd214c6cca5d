"""The whole alignment pipeline on a CPU in minutes: pretrain -> SFT -> reward model -> PPO, and
SFT -> DPO and SFT -> GRPO, each stage a config run by the same loop and naming the earlier
stage's workdir (init.source, ppo.reward_model).

  python experiments/alignment_pipeline.py --workdir=/tmp/pipeline

The task is SYNTHETIC and verifiable (gen_jax.data.synthetic_tasks): integer addition answered as
"The answer is N.", so every stage's true reward is checked by code on held-out prompts no stage
trained on. Prints one table and writes it as summary.json in --workdir: for each stage the mean
true reward of its greedy replies to the held-out prompts, its change from SFT, the KL to the SFT
model of its sampled replies (per reply, in nats), the format reward and the stage's wall time;
for the reward model its held-out pair accuracy and how it ranks the SFT model's own sampled
replies (right above wrong to the same prompt: the signal PPO learns from), and the true reward of
the reply it scores highest of 4 and of the one PPO at its KL weight moves toward (the highest
log-probability plus score / kl_coef), beside the SFT model's likeliest: rl.reward_model_ranking.
Each stage's own workdir holds its checkpoints, metrics.jsonl and TensorBoard events.

About 17 minutes on a 2-core CPU; results are in docs/BENCHMARKS.md. The sft_continued row is a
control (SFT trained on as long as DPO, at DPO's learning rate): compare each stage with it too.
The ppo_verifiable row is PPO scored by the task's exact-match check instead of the reward model:
the gap between it and the ppo row is what the learned reward model costs.
"""
import json
import math
import os
import time

from absl import app, flags, logging
import jax

from gen_jax.config import load_config_file
from gen_jax.config.presets import set_field

_WORKDIR = flags.DEFINE_string("workdir", None, "Where every stage writes its workdir.",
                               required=True)
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies every stage's step count (0.1: a smoke run).")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The model every stage shares (a later stage starts from the earlier one's weights).
MODEL = {"model.vocab_size": 512, "model.embed_dim": 128, "model.num_layers": 4,
         "model.num_heads": 4, "model.num_kv_heads": 2, "model.head_dim": 32,
         "model.mlp_dim": 384, "model.max_seq_len": 64}
# 1000 held-out prompts: a binomial standard error of at most 1.6 points on the true reward.
TASK = {"task.max_digits": 2, "task.num_train": 4000, "task.num_eval": 1000}
RL = {"rollout.max_new_tokens": 16, "rollout.eval_batch_size": 100, "optimizer.weight_decay": 0.0,
      "optimizer.warmup_steps": 0}
PPO_KL_COEF = 1.0
# (name, config file, steps, overrides); "{name}" in a value is that stage's workdir.
STAGES = (
    ("pretrain", "configs/llm/pretrain.py:tiny", 150,
     {"train.batch_size": 16, "optimizer.learning_rate": 3e-3}),
    ("sft", "configs/llm/sft.py:tiny", 800,
     {"data.source": "synthetic:arithmetic", "init.source": "workdir:{pretrain}",
      "train.batch_size": 16, "optimizer.learning_rate": 2e-3, "optimizer.warmup_steps": 20}),
    # The reward model learns from the SFT model's own mistakes, its scores centered: rule-made
    # pairs and uncentered scores ranked the policy's samples no better than chance within a
    # prompt. Mirrored pairs keep it from preferring answers by their last digit, a shortcut PPO
    # found (docs/BENCHMARKS.md).
    ("reward_model", "configs/llm/reward.py:tiny", 1000,
     {"init.source": "workdir:{sft}", "train.batch_size": 32, "optimizer.learning_rate": 5e-4,
      "pairs.rejected": "policy", "pairs.mirror": True, "reward.center_weight": 0.01}),
    # KL weight 1: the reward model's scores alone pick worse replies than the SFT model's greedy
    # one, and PPO at a small weight over-optimizes them; at 1 they and the SFT model's
    # probabilities together pick better than either (the reward_model row's "at kl 1").
    ("ppo", "configs/llm/ppo.py:tiny", 150,
     {"init.source": "workdir:{sft}", "ppo.reward_model": "workdir:{reward_model}",
      "train.batch_size": 64, "train.epochs_per_batch": 2, "train.minibatches": 2,
      "optimizer.learning_rate": 1e-4, "ppo.kl_coef": PPO_KL_COEF, **RL}),
    # PPO scored by the task's own check instead of the reward model (ppo.reward_functions):
    # what the algorithm does with an exact reward, beside what it does with the learned one.
    # (At ppo's learning rate, 2e-5, it gained 0.9 points; ppo itself at 1e-4 over-optimizes.)
    ("ppo_verifiable", "configs/llm/ppo.py:tiny", 60,
     {"init.source": "workdir:{sft}", "ppo.reward_functions": "exact_match",
      "ppo.value_model": "shared", "train.batch_size": 64, "train.epochs_per_batch": 2,
      "train.minibatches": 2, "optimizer.learning_rate": 1e-4, "ppo.kl_coef": 0.05, **RL}),
    # DPO on the SFT model's own mistakes, with the chosen reply's NLL added (RPO): plain DPO on
    # rule-made pairs left the held-out reward where SFT had it (docs/BENCHMARKS.md).
    ("dpo", "configs/llm/dpo.py:tiny", 150,
     {"init.source": "workdir:{sft}", "train.batch_size": 16, "optimizer.learning_rate": 3e-5,
      "optimizer.warmup_steps": 5, "dpo.beta": 0.1, "pairs.rejected": "policy",
      "dpo.chosen_nll_weight": 1.0}),
    # The control: SFT continued as long as DPO trains, at DPO's learning rate, on the task's
    # demonstrations. A stage that beats SFT but not this has gained from more (annealed)
    # supervised training, not from its own objective.
    ("sft_continued", "configs/llm/sft.py:tiny", 150,
     {"data.source": "synthetic:arithmetic", "init.source": "workdir:{sft}",
      "train.batch_size": 16, "optimizer.learning_rate": 3e-5, "optimizer.warmup_steps": 5}),
    ("grpo", "configs/llm/grpo.py:tiny", 100,
     {"init.source": "workdir:{sft}", "train.batch_size": 16, "grpo.group_size": 8,
      "optimizer.learning_rate": 3e-4, **RL}),
)
POLICIES = ("sft", "ppo", "ppo_verifiable", "dpo", "sft_continued", "grpo")


def stage_config(spec: str, steps: int, overrides: dict, workdirs: dict):
  config = load_config_file(os.path.join(REPO, spec))
  steps = max(2, round(steps * _SCALE.value))
  fields = {**MODEL, **TASK, "train.num_steps": steps, "train.eval_every": steps,
            "train.log_every": max(1, steps // 10), "checkpoint.every_steps": steps,
            "logging.progress_bar": False, **overrides}
  for field, value in fields.items():
    if field.split(".")[0] in config:  # RL-only fields skip the other stages' configs.
      set_field(config, field, value.format(**workdirs) if isinstance(value, str) else value)
  return config


def evaluate(workdirs: dict, policies=POLICIES) -> dict:
  """Each of `policies`' true reward and KL to the SFT model on the held-out prompts, and how the
  reward model ranks the SFT model's own replies to them (what PPO learns from)."""
  from gen_jax.families import llm, llm_sources, rl
  from gen_jax.models import RewardModel, Transformer
  from gen_jax.train.state import rng_for
  config = stage_config("configs/llm/grpo.py:tiny", 1, RL, workdirs)
  _, held_out = llm.task_problems(config)
  sft = llm_sources.load(f"workdir:{workdirs['sft']}", "sft")
  sft_net, sft_params = Transformer(sft.config), jax.device_put(sft.params)
  results = {}
  for name in policies:
    loaded = llm_sources.load(f"workdir:{workdirs[name]}", name)
    results[name] = rl.evaluate_policy(
        Transformer(loaded.config), jax.device_put(loaded.params), sft_net, sft_params,
        loaded.tokenizer, held_out, config=config, rng=rng_for(0, "pipeline"))
  scorer = llm_sources.load_reward_model(f"workdir:{workdirs['reward_model']}", "reward_model")
  results["reward_model"] = rl.reward_model_ranking(
      sft_net, sft_params, RewardModel(scorer.config), jax.device_put(scorer.params),
      sft.tokenizer, held_out, config=config, num_replies=4, rng=rng_for(0, "pipeline ranking"),
      kl_coefs=(PPO_KL_COEF,))
  return results


def _strict_json(value):
  """`value` with NaN and infinities as None: strict JSON parsers refuse Python's NaN, and a
  ranking with no pair to rank is NaN."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {key: _strict_json(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict_json(item) for item in value]
  return value


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  from gen_jax.train import train_and_evaluate
  root = _WORKDIR.value
  os.makedirs(root, exist_ok=True)
  workdirs, seconds, metrics = {}, {}, {}
  for name, spec, steps, overrides in STAGES:
    workdirs[name] = os.path.join(root, name)
    print(f"=== {name}: {spec}", flush=True)
    start = time.perf_counter()
    metrics[name] = train_and_evaluate(stage_config(spec, steps, overrides, workdirs),
                                       workdirs[name])
    seconds[name] = time.perf_counter() - start
  results = evaluate(workdirs)
  sft_reward = results["sft"]["true_reward"]
  rows = []
  for name, spec, _, _ in STAGES:
    row = {"stage": name, "config": spec, "wall_seconds": round(seconds[name], 1)}
    if name in POLICIES:
      row.update({k: round(v, 4) for k, v in results[name].items()})
      row["true_reward_change_vs_sft"] = round(results[name]["true_reward"] - sft_reward, 4)
    if name == "reward_model":
      row["held_out_pair_accuracy"] = round(metrics[name]["eval/accuracy"], 4)
      row.update({f"sft_replies_{k}": round(v, 4) for k, v in results[name].items()})
    rows.append(row)
  summary = {"task": "synthetic integer addition (gen_jax.data.synthetic_tasks)",
             "held_out_prompts": TASK["task.num_eval"], "scale": _SCALE.value, "stages": rows}
  with open(os.path.join(root, "summary.json"), "w") as f:
    json.dump(_strict_json(summary), f, indent=2, allow_nan=False)
  print(f"\n{'stage':<14} {'true reward':>11} {'vs SFT':>7} {'KL to SFT':>9} {'format':>6} "
        f"{'length':>6} {'wall s':>7}")
  for row in rows:
    if "true_reward" in row:
      print(f"{row['stage']:<14} {row['true_reward']:>11.3f} "
            f"{row['true_reward_change_vs_sft']:>+7.3f} {row['kl_to_reference']:>9.3f} "
            f"{row['format_reward']:>6.3f} {row['response_length']:>6.2f} "
            f"{row['wall_seconds']:>7.1f}")
    else:
      extra = (f"  (held-out pair accuracy {row['held_out_pair_accuracy']:.3f}; on the SFT "
               f"model's own replies: within-prompt {row['sft_replies_within_prompt_accuracy']:.3f}"
               f", AUC {row['sft_replies_auc']:.3f}; true reward of its best of 4 "
               f"{row['sft_replies_best_of_n']:.3f}, at kl {PPO_KL_COEF:g} "
               f"{row[f'sft_replies_best_of_n_at_kl_coef_{PPO_KL_COEF:g}']:.3f}, the SFT model's "
               f"likeliest {row['sft_replies_mode_of_n']:.3f}, any {row['sft_replies_sampled']:.3f})"
               if row["stage"] == "reward_model" else "")
      print(f"{row['stage']:<14} {'':>11} {'':>7} {'':>9} {'':>6} {'':>6} "
            f"{row['wall_seconds']:>7.1f}{extra}")
  print(f"\nWrote {os.path.join(root, 'summary.json')}")


if __name__ == "__main__":
  app.run(main)
