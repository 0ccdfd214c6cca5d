"""GRPO (Shao et al., 2024): the SFT model samples a group of answers to each prompt of the
synthetic arithmetic task and learns from their rewards relative to the group's, checked by code
(grpo.reward_functions): no reward model, no value model.

  python -m gen_jax.main --config=configs/llm/grpo.py:tiny --config.init.source=workdir:/tmp/sft \
      --workdir=/tmp/grpo

Every step samples grpo.group_size responses to each of train.batch_size prompts. Held-out
metrics at eval time: eval/true_reward, eval/kl_to_reference, eval/response_length; training
metrics: reward, true_reward (exact match alone), reward_std_in_group, solved_groups (groups
whose rewards differ, the only ones that teach), kl, kl_k3, entropy, clip_fraction, approx_kl,
response_length.

Presets: tiny (tests and CPU: the tiny model's shape).
"""
from gen_jax.config import apply_preset
from gen_jax.config import llm

PRESETS = {
    "tiny": {
        **llm.TINY_MODEL,
        "train.num_steps": 10, "train.batch_size": 8, "train.log_every": 5,
        "train.eval_every": 10, "optimizer.warmup_steps": 0, "optimizer.learning_rate": 1e-4,
        "optimizer.weight_decay": 0.0, "checkpoint.every_steps": 10,
        "rollout.max_new_tokens": 8, "task.num_eval": 32, "rollout.eval_batch_size": 32,
    },
}


def get_config(arg=None):
  return apply_preset(llm.rl_base("grpo"), arg, PRESETS, default="tiny")
