"""PPO (against the reward model, and on the task's own check), DPO and GRPO from one SFT model at
equal wall-clock budgets, on the synthetic verifiable task.

  python benchmarks/alignment.py --workdir=/tmp/alignment_bench --budget_seconds=120

Runs experiments/alignment_pipeline.py's pretrain, SFT and reward model stages (reused when
--workdir already holds them), then gives each method the same training time: a 3-step probe
measures its seconds per step (after compiling), and the run gets budget / that many steps, with
the pipeline's other settings. Prints for SFT and each method the held-out true reward (greedy
replies to prompts no stage trained on, checked by code), its change from SFT, the KL to the SFT
model paid for it, the steps and the wall time; and the rollout throughput of the jitted KV-cache
sampler (generated tokens/s, SFT policy, the RL stages' batch of prompts).
"""
import importlib.util
import json
import os
import time

from absl import app, flags, logging
import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "alignment_pipeline", os.path.join(REPO, "experiments", "alignment_pipeline.py"))
pipeline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pipeline)  # Also defines --workdir and --scale.

_BUDGET = flags.DEFINE_float("budget_seconds", 120.0, "Training time each method gets.")
METHODS = ("ppo", "ppo_verifiable", "dpo", "grpo")


def _train(name: str, steps: int, workdirs: dict, workdir: str):
  from gen_jax.train import train_and_evaluate
  spec, _, overrides = next((s, n, o) for stage, s, n, o in pipeline.STAGES if stage == name)
  config = pipeline.stage_config(spec, steps, overrides, workdirs)
  # Exactly `steps` (stage_config would scale them by --scale).
  config.train.num_steps = config.train.eval_every = config.checkpoint.every_steps = steps
  config.train.log_every = max(1, steps // 10)
  start = time.perf_counter()
  metrics = train_and_evaluate(config, workdir)
  return metrics, time.perf_counter() - start, config


def _rollout_tokens_per_second(workdirs: dict) -> float:
  from gen_jax.families import llm, llm_sources, rl
  from gen_jax.models import Transformer
  config = pipeline.stage_config("configs/llm/grpo.py:tiny", 1, pipeline.RL, workdirs)
  sft = llm_sources.load(f"workdir:{workdirs['sft']}", "sft")
  tok, net, params = sft.tokenizer, Transformer(sft.config), jax.device_put(sft.params)
  grpo = next(o for stage, _, _, o in pipeline.STAGES if stage == "grpo")
  size = grpo["train.batch_size"] * grpo["grpo.group_size"]
  problems = (llm.task_problems(config)[1] * size)[:size]
  prompts = rl.prompt_arrays(rl.encode_prompts(tok, problems), rl.prompt_width(config, tok),
                             tok.pad_id)
  generate = lambda rng: rl.rollout(  # noqa: E731
      net, params, prompts, sampling_params=rl.sampling(config),
      max_new_tokens=config.rollout.max_new_tokens, tok=tok, stops=rl.end_of_turn(tok), rng=rng)
  jax.block_until_ready(generate(jax.random.key(0))[0])  # Compile.
  tokens, start = 0, time.perf_counter()
  for i in range(5):
    batch, _ = generate(jax.random.key(i + 1))
    tokens += int(np.asarray(batch["response_mask"]).sum())
  return tokens / (time.perf_counter() - start)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  root = pipeline._WORKDIR.value
  os.makedirs(root, exist_ok=True)
  workdirs = {name: os.path.join(root, name) for name, *_ in pipeline.STAGES}
  for name in ("pretrain", "sft", "reward_model"):
    if not os.path.isdir(os.path.join(workdirs[name], "checkpoints")):
      steps = next(n for stage, _, n, _ in pipeline.STAGES if stage == name)
      _train(name, max(2, round(steps * pipeline._SCALE.value)), workdirs, workdirs[name])
  runs = {}
  for name in METHODS:
    probe, _, config = _train(name, 3, workdirs, os.path.join(root, f"probe_{name}"))
    rate = probe.get("train/examples_per_sec") or probe["train/tokens_per_sec"]
    seconds_per_step = config.train.batch_size / rate
    steps = max(2, round(_BUDGET.value / seconds_per_step))
    workdirs[name] = os.path.join(root, f"{name}_budget")
    _, wall, _ = _train(name, steps, workdirs, workdirs[name])
    runs[name] = {"steps": steps, "seconds_per_step": round(seconds_per_step, 3),
                  "wall_seconds": round(wall, 1)}
  results = pipeline.evaluate(workdirs, ("sft", *METHODS))
  throughput = _rollout_tokens_per_second(workdirs)
  sft_reward = results["sft"]["true_reward"]
  print(f"\nbudget {_BUDGET.value:.0f} s of training per method; held-out prompts: "
        f"{pipeline.TASK['task.num_eval']}")
  print(f"{'method':<14} {'true reward':>11} {'vs SFT':>7} {'KL to SFT':>9} {'steps':>6} "
        f"{'s/step':>7} {'wall s':>7}")
  for name in ("sft", *METHODS):
    r, run = results[name], runs.get(name, {})
    print(f"{name:<14} {r['true_reward']:>11.3f} {r['true_reward'] - sft_reward:>+7.3f} "
          f"{r['kl_to_reference']:>9.3f} {run.get('steps', ''):>6} "
          f"{run.get('seconds_per_step', ''):>7} {run.get('wall_seconds', ''):>7}")
  print(f"rollout throughput (jitted KV-cache sampler, SFT policy): {throughput:,.0f} "
        "generated tokens/s")
  with open(os.path.join(root, "benchmark.json"), "w") as f:
    json.dump({"budget_seconds": _BUDGET.value, "evaluation": results, "runs": runs,
               "rollout_tokens_per_second": throughput}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
