"""RLHF with PPO (Ouyang et al., 2022): the SFT model samples answers to the synthetic arithmetic
task's prompts and learns from a reward model's scores under a KL penalty to itself at the start.

  python -m gen_jax.main --config=configs/llm/ppo.py:tiny --config.init.source=workdir:/tmp/sft \
      --config.ppo.reward_model=workdir:/tmp/rm --workdir=/tmp/ppo

With --config.ppo.reward_functions=exact_match (and ppo.value_model=shared) instead of a reward
model, the task's own check scores the responses: PPO with verifiable rewards.

Every step samples one response per prompt (train.batch_size prompts, rollout.* settings), then
makes train.epochs_per_batch passes of train.minibatches clipped updates. ppo.value_model picks a
separate value model (started from the reward model) or a value head on the policy; ppo.kl_target
> 0 adapts the KL coefficient. Which ppo.kl_coef can gain against a reward model:
`python -m gen_jax.eval reward_ranking --reward_model=workdir:/tmp/rm --kl_coefs=0.3,1,3` (the
alignment pipeline's reward model: 1). Held-out metrics at eval time: eval/true_reward (the
task's exact-match reward of greedy replies), eval/kl_to_reference, eval/response_length.
Training metrics: reward (the reward model's), true_reward (the task's check of the same
rollouts: when reward rises and it falls, the policy is exploiting the reward model), kl,
kl_coef, entropy, clip_fraction, approx_kl, value_explained_variance, response_length.

Presets: tiny (tests and CPU: the tiny model's shape).
"""
from gen_jax.config import apply_preset
from gen_jax.config import llm

PRESETS = {
    "tiny": {
        **llm.TINY_MODEL,
        "train.num_steps": 10, "train.batch_size": 16, "train.epochs_per_batch": 2,
        "train.minibatches": 2, "train.log_every": 5, "train.eval_every": 10,
        "optimizer.warmup_steps": 0, "optimizer.learning_rate": 1e-4,
        "optimizer.weight_decay": 0.0, "checkpoint.every_steps": 10,
        "rollout.max_new_tokens": 8, "task.num_eval": 32, "rollout.eval_batch_size": 32,
    },
}


def get_config(arg=None):
  return apply_preset(llm.rl_base("ppo"), arg, PRESETS, default="tiny")
