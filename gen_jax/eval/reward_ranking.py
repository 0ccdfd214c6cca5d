"""Before PPO: what a reward model trained on the synthetic task would teach a policy.

The policy samples replies to the task's held-out prompts, the task's code checks them and the
reward model scores them; `rl.ranking_accuracy` then says how well the scores put right replies
above wrong ones and what each way of picking one reply per prompt is worth in true reward. PPO
with KL weight beta moves the policy toward pi * exp(score / beta), so its pick
"best_of_n_at_kl_coef_{beta}" (the highest log p + score / beta) against "mode_of_n" (the
policy's likeliest reply) says at which ppo.kl_coef PPO can raise the true reward.
"""
import jax
import ml_collections

from gen_jax.config import load_workdir_config
from gen_jax.config.errors import require
from gen_jax.families import llm, llm_sources, rl
from gen_jax.models import RewardModel, Transformer


def reward_ranking(reward_model: str, model: str = "", *, num_replies: int = 4,
                   kl_coefs: tuple[float, ...] = (0.3, 1.0, 3.0), temperature: float = 1.0,
                   max_new_tokens: int = 16, limit: int | None = None,
                   prompts_per_call: int = 64, seed: int = 0) -> dict[str, float]:
  """`rl.ranking_accuracy` of a reward model on a policy's sampled replies, plus "prompts".

  Args:
    reward_model: "workdir:DIR" of a reward run whose data is the synthetic task: its task.*
      settings give the held-out prompts (no stage of the run trained on them).
    model: the policy as an init.source ("workdir:DIR", "gguf:PATH", "hf:DIR"); "" is the reward
      run's own init.source (the SFT model it started from).
    num_replies, temperature, max_new_tokens: the replies sampled to each prompt.
    kl_coefs: the KL weights beta to pick under. limit: held-out prompts at most.
  Raises ConfigError naming --reward_model, --model, --kl_coefs or --num_replies.
  """
  scorer = llm_sources.load_reward_model(reward_model, "--reward_model")
  run = load_workdir_config(llm_sources.parse(reward_model, "--reward_model")[1])
  require(run.data.source == llm.SYNTHETIC_SOURCE, "--reward_model",
          f"trained on {run.data.source!r}; the ranking checks replies to the synthetic task's "
          f"held-out prompts ({llm.SYNTHETIC_SOURCE!r} runs only)")
  require(model or run.init.source, "--model", "required: the reward run names no init.source")
  policy = llm_sources.load(model or run.init.source, "--model")
  require(policy.config.vocab_size == scorer.config.vocab_size, "--model",
          f"has a vocabulary of {policy.config.vocab_size} tokens, the reward model "
          f"{scorer.config.vocab_size}")
  require(all(beta > 0 for beta in kl_coefs), "--kl_coefs", f"must be positive, got {kl_coefs}")
  require(num_replies > 0, "--num_replies", f"must be positive, got {num_replies}")
  problems = llm.task_problems(run)[1][:limit]
  config = ml_collections.ConfigDict({"rollout": dict(
      temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
      eval_batch_size=min(prompts_per_call, len(problems)))})
  found = rl.reward_model_ranking(
      Transformer(policy.config), jax.device_put(policy.params), RewardModel(scorer.config),
      jax.device_put(scorer.params), policy.tokenizer, problems, config=config,
      num_replies=num_replies, rng=jax.random.key(seed), kl_coefs=tuple(kl_coefs))
  return {"prompts": float(len(problems)), "num_replies": float(num_replies),
          "temperature": temperature, **found}


def ranking_report(found: dict[str, float], kl_coefs: tuple[float, ...]) -> str:
  """`reward_ranking`'s result as the lines the CLI prints."""
  picks = [("any (the mean)", "sampled"), ("the reward model's top score", "best_of_n"),
           *((f"PPO's optimum at kl_coef {beta:g}", f"best_of_n_at_kl_coef_{beta:g}")
             for beta in kl_coefs),
           ("the policy's likeliest", "mode_of_n"), ("an oracle", "oracle_best_of_n")]
  return "\n".join([
      f"{found['prompts']:.0f} held-out prompts of the synthetic task, "
      f"{found['num_replies']:.0f} replies each at temperature {found['temperature']:g}",
      f"right above wrong: within a prompt {found['within_prompt_accuracy']:.3f} "
      f"({found['within_prompt_pairs']:.0f} pairs), across prompts (AUC) {found['auc']:.3f}",
      "true reward of the reply picked by:",
      *(f"  {label:<32} {found[key]:.3f}" for label, key in picks)])
