"""The llm family: a decoder-only transformer trained with next-token loss on packed text."""
import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from gen_jax import data as data_lib
from gen_jax import objectives, ops
from gen_jax.config.common import DTYPES
from gen_jax.config.errors import ConfigError, require
from gen_jax.data import conversations, synthetic_tasks
from gen_jax.families import llm_sources, llm_text
from gen_jax.lora import check_lora, is_adapter, merge_adapters
from gen_jax.models.transformer import (REMAT_POLICIES, Transformer, TransformerConfig,
                                        output_layer)
from gen_jax.quant.convert import dequantize_params, quantize_params
from gen_jax.quant.formats import check_weight_quantization
from gen_jax import partition
from gen_jax.train.task import WEIGHT, ParamSpec, Task

MIN_VOCAB = 256 + len(data_lib.tokenizer.SPECIAL_TOKENS)  # Byte alphabet plus special tokens.


def validate(config: ml_collections.ConfigDict) -> None:
  validate_model(config)
  for name in ("router_aux_loss_weight", "router_z_loss_weight"):
    weight = config.objective[name]
    require(weight >= 0, f"objective.{name}", f"must be >= 0, got {weight}")
  validate_logit_chunks(config)
  require(not (config.objective.logit_chunks and config.distill.teacher), "objective.logit_chunks",
          "distillation compares whole next-token distributions (distill.teacher); set it to 0")
  validate_sources(config)
  validate_data(config)


def validate_logit_chunks(config: ml_collections.ConfigDict) -> None:
  """objective.logit_chunks: 0, or slices of the positions that divide model.max_seq_len."""
  chunks = config.objective.logit_chunks
  require(chunks >= 0 and (chunks == 0 or config.model.max_seq_len % chunks == 0),
          "objective.logit_chunks", f"must be 0 or a positive divisor of model.max_seq_len="
          f"{config.model.max_seq_len}, got {chunks}")


def validate_transformer_fields(m: ml_collections.ConfigDict) -> None:
  """The fields of a config.model that any gen_jax Transformer has (the llm stages' and the VQ
  prior's): sizes, head divisibility, RoPE, dtypes, attention and rematerialization."""
  for name in ("embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
    require(m[name] > 0, f"model.{name}", f"must be positive, got {m[name]}")
  require(m.embed_dim % m.num_heads == 0, "model.num_heads",
          f"{m.num_heads} heads do not divide model.embed_dim={m.embed_dim}")
  require(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads",
          f"{m.num_kv_heads} kv heads do not divide model.num_heads={m.num_heads}")
  require(m.head_dim % 2 == 0, "model.head_dim", f"must be even for RoPE, got {m.head_dim}")
  require(m.rope_base > 0, "model.rope_base", f"must be positive, got {m.rope_base}")
  for name in ("dtype", "param_dtype"):
    require(m[name] in DTYPES, f"model.{name}", f"{m[name]!r} is not one of {DTYPES}")
  try:
    ops.split_impl(m.attention_impl)
  except ValueError as error:
    require(False, "model.attention_impl", str(error))
  require(m.sequence_parallel in ops.SEQUENCE_PARALLEL, "model.sequence_parallel",
          f"{m.sequence_parallel!r} is not one of {ops.SEQUENCE_PARALLEL}")
  require(not (m.sequence_parallel != "all_gather" and m.attention_impl == "cudnn"),
          "model.sequence_parallel", f"{m.sequence_parallel!r} combines blocks by their "
          "log-sum-exp, which model.attention_impl='cudnn' does not return; use 'pallas' or 'xla'")
  require(not (m.sequence_parallel == "striped_ring" and m.sliding_window),
          "model.sequence_parallel", "'striped_ring' has no sliding window (model.sliding_window="
          f"{m.sliding_window}); use 'ring', which skips the shards outside the window")
  require(m.sliding_window >= 0, "model.sliding_window",
          f"must be >= 0 (0: attend to every earlier token), got {m.sliding_window}")
  require(m.remat in REMAT_POLICIES, "model.remat", f"{m.remat!r} is not one of {REMAT_POLICIES}")
  require(isinstance(m.scan_unroll, int) and 1 <= m.scan_unroll <= m.num_layers,
          "model.scan_unroll", f"must be an integer in [1, model.num_layers={m.num_layers}] (1: "
          f"a rolled layer loop; {m.num_layers}: unrolled), got {m.scan_unroll!r}")


def validate_model(config: ml_collections.ConfigDict) -> None:
  """config.model of a trainable transformer (every stage that trains one checks it)."""
  m = config.model
  for name in ("vocab_size", "max_seq_len"):
    require(m[name] > 0, f"model.{name}", f"must be positive, got {m[name]}")
  require(m.vocab_size >= MIN_VOCAB, "model.vocab_size",
          f"must be at least {MIN_VOCAB} (256 bytes + special tokens), got {m.vocab_size}")
  validate_transformer_fields(m)
  require(m.num_experts >= 0, "model.num_experts",
          f"must be >= 0 (0: the dense MLP), got {m.num_experts}")
  if m.num_experts:
    require(1 <= m.experts_per_token <= m.num_experts, "model.experts_per_token",
            f"must be in [1, model.num_experts={m.num_experts}], got {m.experts_per_token}")
    require(m.expert_capacity_factor >= 0, "model.expert_capacity_factor",
            f"must be >= 0 (0: no token is dropped), got {m.expert_capacity_factor}")
    require(m.expert_group_size >= 0, "model.expert_group_size",
            f"must be >= 0 (0: each sequence is one routing group), got {m.expert_group_size}")
  check_weight_quantization(m)
  check_lora(m)
  # Int kernels cannot take gradient steps; they can be the frozen base of adapters (QLoRA).
  require(m.weight_bits == 0 or m.lora_rank > 0, "model.weight_bits",
          f"training updates float kernels, got {m.weight_bits}; train with 0 and quantize the "
          "trained params with gen_jax.quant.quantize_params, or set model.lora_rank > 0 to train "
          "adapters over the quantized base (QLoRA)")
  require(m.weight_bits == 0 or config.init.source, "init.source",
          f"is empty: model.weight_bits={m.weight_bits} quantizes a pretrained base for QLoRA; "
          "name the model it starts from")


DATA_FORMATS = ("text", "chat")
CHAT_SOURCES = "'chatterbot', 'synthetic:arithmetic' or a .jsonl file of {\"messages\": [...]}"


def validate_data(config: ml_collections.ConfigDict) -> None:
  d = config.data
  require(d.format in DATA_FORMATS, "data.format", f"{d.format!r} is not one of {DATA_FORMATS}")
  if d.format == "text":
    require(d.source != "", "data.source", "is empty; use 'pydoc', a path, a glob or 'tfds:NAME'")
  else:
    chat_source = lambda s: s in ("chatterbot", SYNTHETIC_SOURCE) or s.endswith(".jsonl")  # noqa: E731
    require(chat_source(d.source), "data.source",
            f"{d.source!r}: with data.format='chat' use {CHAT_SOURCES}")
    require(not d.eval_source or chat_source(d.eval_source), "data.eval_source",
            f"{d.eval_source!r}: with data.format='chat' use {CHAT_SOURCES}")
  require(0 < d.eval_fraction < 1, "data.eval_fraction", f"must be in (0, 1), got {d.eval_fraction}")
  validate_task(config)


def validate_task(config: ml_collections.ConfigDict) -> None:
  t = config.task
  for name in ("max_digits", "num_train", "num_eval"):
    require(t[name] > 0, f"task.{name}", f"must be positive, got {t[name]}")
  require(t.max_digits <= 18, "task.max_digits", f"must be at most 18, got {t.max_digits}")


def validate_sources(config: ml_collections.ConfigDict) -> None:
  """init.source and distill.teacher load, and agree with config.model and with each other."""
  d = config.distill
  require(d.temperature > 0, "distill.temperature", f"must be positive, got {d.temperature}")
  require(0 <= d.kl_weight <= 1, "distill.kl_weight", f"must be in [0, 1], got {d.kl_weight}")
  init = teacher = None
  if llm_sources.parse(config.init.source, "init.source"):
    init = llm_sources.load(config.init.source, "init.source")
    llm_sources.check_shared_fields(config.model, init.config, "init.source")
  if llm_sources.parse(d.teacher, "distill.teacher"):
    teacher = llm_sources.load(d.teacher, "distill.teacher")
    require(teacher.config.vocab_size == config.model.vocab_size, "model.vocab_size",
            f"{config.model.vocab_size}, but the teacher (distill.teacher) predicts "
            f"{teacher.config.vocab_size} tokens; the student needs the teacher's vocabulary")
  if init and teacher:
    require(init.tokenizer.hf.to_str() == teacher.tokenizer.hf.to_str(), "distill.teacher",
            "tokenizes differently from init.source; distillation compares their distributions "
            "token by token")


def model(config: ml_collections.ConfigDict) -> Transformer:
  return Transformer(TransformerConfig.from_config(config.model))


def _teacher(config: ml_collections.ConfigDict) -> tuple[Transformer, llm_sources.Loaded] | None:
  """The distillation teacher, computing in the student's dtype and attention implementation."""
  if not config.distill.teacher:
    return None
  loaded = llm_sources.load(config.distill.teacher, "distill.teacher")
  m = config.model
  teacher_config = dataclasses.replace(loaded.config, dtype=m.dtype, param_dtype=m.param_dtype,
                                       attention_impl=m.attention_impl,
                                       sequence_parallel=m.sequence_parallel)
  return Transformer(teacher_config), loaded


def param_spec(config: ml_collections.ConfigDict) -> ParamSpec:
  """The llm family's parameters: the model's tree, or {"student", "teacher"} when distilling.

  With init.source the model's weights start from that source's; with model.lora_rank > 0 only
  the adapters train (their base frozen; with model.weight_bits the base is the source rounded to
  that int format: QLoRA); a teacher is always frozen.
  """
  net = model(config)
  dummy = jnp.zeros((1, config.model.max_seq_len), jnp.int32)
  teacher = _teacher(config)
  adapters = config.model.lora_rank > 0

  def init(rng):
    params = net.init(rng, dummy)["params"]
    if teacher is None:
      return params
    teacher_params = teacher[0].init(jax.random.fold_in(rng, 1), dummy)["params"]
    return {"student": params, "teacher": teacher_params}

  def trainable(path):
    if teacher is not None:
      if path[0] != "student":
        return False
      path = path[1:]
    return is_adapter(path) if adapters else True

  def pretrained():
    values = {}
    if config.init.source:
      prefix = ("student",) if teacher is not None else ()
      loaded = llm_sources.load(config.init.source, "init.source")
      source_params = loaded.params
      if config.model.weight_bits:  # QLoRA: the frozen base in the config's int format.
        model_config = TransformerConfig.from_config(config.model)
        float_config = dataclasses.replace(model_config, weight_bits=0, lora_rank=0)
        source_params = jax.device_get(quantize_params(
            source_params, float_config, bits=model_config.weight_bits,
            group_size=model_config.weight_group_size))
      values.update({prefix + p: v for p, v in partition.flatten(source_params).items()})
    if teacher is not None:
      values.update({("teacher",) + p: v for p, v in partition.flatten(teacher[1].params).items()})
    return values

  return ParamSpec(init, trainable if teacher is not None or adapters else None,
                   pretrained if config.init.source or teacher is not None else None)


def inference_params(config: ml_collections.ConfigDict, params) -> tuple[TransformerConfig, dict]:
  """(model config, params) of the model a run trains, for sampling or export: a distillation
  run's student, with LoRA adapters folded into their float kernels (a QLoRA run's int base is
  dequantized first: the plain float model computes what the adapted int one does)."""
  if config.distill.teacher:
    params = params["student"]
  model_config = TransformerConfig.from_config(config.model)
  if model_config.lora_rank and model_config.weight_bits:  # QLoRA: the int base dequantized.
    params = dequantize_params(params, model_config)
    model_config = dataclasses.replace(model_config, weight_bits=0)
  if model_config.lora_rank:
    params, model_config = merge_adapters(params, model_config)
  return model_config, params


SYNTHETIC_SOURCE = "synthetic:arithmetic"


def task_problems(config) -> tuple[list, list]:
  """(training, held-out) problems of the synthetic task config.task (disjoint prompts)."""
  t = config.task
  return synthetic_tasks.task_splits(t.num_train, t.num_eval, seed=t.seed, max_digits=t.max_digits)


def _conversations(config) -> tuple[list, list]:
  """(training, held-out) conversations of a data.format='chat' source."""
  d = config.data
  if d.source == SYNTHETIC_SOURCE:
    train, held_out = task_problems(config)
    return synthetic_tasks.demonstrations(train), synthetic_tasks.demonstrations(held_out)
  train = conversations.load_conversations(d.source, "data.source")
  if d.eval_source == SYNTHETIC_SOURCE:
    return train, synthetic_tasks.demonstrations(task_problems(config)[1])
  if d.eval_source:
    return train, conversations.load_conversations(d.eval_source, "data.eval_source")
  return conversations.split_items(train, d.eval_fraction)


def _documents(config) -> tuple[list, list]:
  d = config.data
  kwargs = dict(tfds_text_key=d.tfds_text_key, tfds_data_dir=d.tfds_data_dir)
  docs = data_lib.load_documents(d.source, tfds_split=d.tfds_split, **kwargs)
  if d.eval_source:
    return docs, data_lib.load_documents(d.eval_source, field="data.eval_source",
                                         tfds_split=d.tfds_split, **kwargs)
  if d.source.startswith("tfds:") and d.tfds_eval_split:
    return docs, data_lib.load_documents(d.source, field="data.tfds_eval_split",
                                         tfds_split=d.tfds_eval_split, **kwargs)
  return data_lib.split_documents(docs, d.eval_fraction)


def tokenizer_for(config, workdir: str, train_docs, resuming: bool) -> data_lib.Tokenizer:
  """The workdir's tokenizer when resuming; otherwise init.source's or distill.teacher's (a model
  keeps the tokenizer it was trained with), else one trained on train_docs; saved in the workdir."""
  path = os.path.join(workdir, data_lib.tokenizer.TOKENIZER_FILE)
  source, field = ((config.init.source, "init.source") if config.init.source
                   else (config.distill.teacher, "distill.teacher"))
  if resuming and os.path.exists(path):
    tok = data_lib.Tokenizer.load(workdir)
  elif source:
    tok = llm_sources.load(source, field).tokenizer
    if jax.process_index() == 0:
      tok.save(workdir)
  elif jax.process_count() == 1:
    tok = data_lib.train_bpe((d.text for d in train_docs), config.model.vocab_size)
    tok.save(workdir)
  else:
    # One host trains it and the others read it back from the shared workdir, so every host
    # tokenizes with the very same merges (BPE training is multi-threaded).
    if jax.process_index() == 0:
      data_lib.train_bpe((d.text for d in train_docs), config.model.vocab_size).save(workdir)
    multihost_utils.sync_global_devices("gen_jax: tokenizer saved")
    tok = data_lib.Tokenizer.load(workdir)
  require(tok.vocab_size <= config.model.vocab_size, "model.vocab_size",
          f"{config.model.vocab_size} is smaller than the workdir tokenizer's {tok.vocab_size} "
          f"tokens ({path})")
  return tok


def token_byte_lengths(tok: data_lib.Tokenizer, vocab_size: int) -> np.ndarray:
  """[vocab_size] UTF-8 bytes each token stands for (special and unused ids: 0).

  Byte-level BPE writes each byte as one character, so a token's string length is its byte count;
  added tokens (end-of-text, padding, chat turn markers) are markup and stand for no bytes.
  """
  lengths = np.zeros((vocab_size,), np.float32)
  specials = {tok.pad_id, tok.eos_id, *tok.hf.get_added_tokens_decoder()}
  for i in range(tok.vocab_size):
    if i not in specials:
      lengths[i] = len(tok.hf.id_to_token(i))
  return lengths


def _router_sums(router_stats, row_weights):
  """The MoE's statistics as sums the loop divides by the token count, like every other metric.

  Args:
    router_stats: {name: [layers, b]} from Transformer(..., return_router_stats=True).
    row_weights: [b] counted target tokens of each sequence (a routing group).
  Returns:
    {"router_aux_loss", "router_z_loss", "dropped_token_fraction"}: each sequence's value (the
    losses averaged over layers; dropped / made (token, expert) assignments over all layers) times
    its token count, summed; so the sum is additive over microbatches and devices, and sum / weight
    is the token-weighted mean.
  """
  dropped_fraction = (router_stats["dropped"].sum(axis=0) /
                      jnp.maximum(router_stats["assigned"].sum(axis=0), 1))  # [b]
  per_sequence = {"router_aux_loss": router_stats["aux_loss"].mean(axis=0),
                  "router_z_loss": router_stats["z_loss"].mean(axis=0),
                  "dropped_token_fraction": dropped_fraction}
  return {name: (value * row_weights).sum() for name, value in per_sequence.items()}


def make_loss_fn(config: ml_collections.ConfigDict, byte_lengths: jax.Array):
  """loss_fn(params, batch, rng) -> (loss sum, sums) on packed windows.

  Args:
    byte_lengths: [vocab_size] UTF-8 bytes of each token (`token_byte_lengths`).
  The batch holds tokens, segment_ids, positions and loss_mask, each [b, max_seq_len + 1].
  """
  net = model(config)
  moe = config.model.num_experts > 0
  aux_weight = config.objective.router_aux_loss_weight
  z_weight = config.objective.router_z_loss_weight
  teacher = _teacher(config)
  temperature, kl_weight = config.distill.temperature, config.distill.kl_weight
  logit_chunks = config.objective.logit_chunks

  def loss_fn(params, batch, rng):
    del rng  # The model has no dropout.
    tokens, segment_ids = batch["tokens"], batch["segment_ids"]
    inputs, targets, weights = objectives.packed_targets(tokens, segment_ids)
    weights = weights * batch["loss_mask"][:, 1:]  # Chat data: the assistant's tokens only.
    model_inputs = (inputs, batch["positions"][:, :-1], segment_ids[:, :-1])
    model_params = params if teacher is None else params["student"]
    if logit_chunks:
      hidden, router_stats = net.apply({"params": model_params}, *model_inputs,
                                       return_router_stats=True, outputs="hidden")
      lm_loss, weight = objectives.chunked_next_token_loss(
          hidden, functools.partial(output_layer, net.config, model_params), targets, weights,
          logit_chunks)
    else:
      logits, router_stats = net.apply({"params": model_params}, *model_inputs,
                                       return_router_stats=True)
      lm_loss, weight = objectives.next_token_loss(logits, targets, weights)
    # Summed bytes of the counted targets; reported per token, and the basis of bits per byte.
    target_bytes = (byte_lengths[targets] * weights).sum()
    sums = {WEIGHT: weight, "bytes_per_token": target_bytes}
    loss = lm_loss
    if teacher is not None:
      teacher_logits = teacher[0].apply({"params": params["teacher"]}, *model_inputs)
      kl = objectives.distillation_kl(logits, teacher_logits, weights, temperature)
      loss = kl_weight * temperature ** 2 * kl + (1 - kl_weight) * lm_loss
      sums.update(lm_loss=lm_loss, distill_kl=kl,
                  teacher_lm_loss=objectives.next_token_loss(teacher_logits, targets, weights)[0])
    if moe:
      router_sums = _router_sums(router_stats, weights.sum(axis=1))
      sums.update(lm_loss=lm_loss, **router_sums)
      loss = (loss + aux_weight * router_sums["router_aux_loss"]
              + z_weight * router_sums["router_z_loss"])
    return loss, sums
  return loss_fn


def dry_run_inputs(config: ml_collections.ConfigDict):
  """(loss_fn, global batch shapes) without data or a tokenizer; byte counts do not change shapes."""
  byte_lengths = jnp.ones((config.model.vocab_size,), jnp.float32)
  shape = (config.train.batch_size, config.model.max_seq_len + 1)
  return make_loss_fn(config, byte_lengths), {
      name: jax.ShapeDtypeStruct(shape, jnp.int32)
      for name in ("tokens", "segment_ids", "positions", "loss_mask")}


def _packed_chats(tok: data_lib.Tokenizer, chats: list, seq_len: int, field: str) -> dict:
  """Conversations tokenized with the chat template (only assistant tokens count) and packed."""
  from gen_jax.interop import encode_chat  # Only chat needs jinja2.
  try:
    examples = [encode_chat(tok, messages) for messages in chats]
  except ValueError as e:
    raise ConfigError(field, f"{e} (data.format='chat')") from None
  arrays, cut = data_lib.pack_examples(examples, tok.pad_id, seq_len)
  if cut:
    print(f"{field}: {cut} of {len(chats)} conversations are longer than model.max_seq_len + 1 = "
          f"{seq_len + 1} tokens and were cut to it", flush=True)
  return arrays


def _training_arrays(config, workdir: str, resuming: bool) -> tuple[data_lib.Tokenizer, dict, dict]:
  """(tokenizer, training windows, held-out windows) of config.data."""
  seq_len = config.model.max_seq_len
  if config.data.format == "chat":
    train_chats, eval_chats = _conversations(config)
    # A tokenizer trained here learns from the turns' text; the template adds its markers.
    texts = [data_lib.Document("", m["content"]) for chat in train_chats for m in chat]
    tok = tokenizer_for(config, workdir, texts, resuming)
    return (tok, _packed_chats(tok, train_chats, seq_len, "data.source"),
            _packed_chats(tok, eval_chats, seq_len, "data.eval_source"))
  train_docs, eval_docs = _documents(config)
  tok = tokenizer_for(config, workdir, train_docs, resuming)
  pack = lambda docs: data_lib.pack_documents(  # noqa: E731
      tok.encode_batch([d.text for d in docs]), tok.eos_id, tok.pad_id, seq_len)
  return tok, pack(train_docs), pack(eval_docs)


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  tok, train_arrays, eval_arrays = _training_arrays(config, workdir, resuming)
  seq_len = config.model.max_seq_len
  num_hosts = jax.process_count()
  host_batch = config.train.batch_size // num_hosts
  num_windows = len(train_arrays["tokens"])
  if num_windows // num_hosts < host_batch:
    raise ConfigError("data.source", f"{config.data.source!r} gives {num_windows} training "
                      f"sequences of {seq_len + 1} tokens, fewer than one batch "
                      f"(train.batch_size={config.train.batch_size}); use more text, a smaller "
                      "batch or a shorter model.max_seq_len")
  byte_lengths = jnp.asarray(token_byte_lengths(tok, config.model.vocab_size))

  def eval_metrics(totals):
    # Predicting end-of-text costs nats but stands for no bytes: it is information about where
    # documents end, so it stays in the numerator (a slight overestimate for many short documents).
    # An MoE's or a distilled model's loss_sum holds other terms; bits per byte is the language
    # model's own, on the text.
    lm_loss_sum = totals["lm_loss"] if "lm_loss" in totals else totals["loss_sum"]
    metrics = {"eval/bits_per_byte": lm_loss_sum / math.log(2) / totals["bytes_per_token"]}
    if "teacher_lm_loss" in totals:
      metrics["eval/teacher_bits_per_byte"] = (totals["teacher_lm_loss"] / math.log(2)
                                               / totals["bytes_per_token"])
    return metrics

  train_data, eval_data = data_lib.host_pipelines(
      train_arrays, eval_arrays, global_batch_size=config.train.batch_size,
      grad_accum_steps=config.train.grad_accum_steps,
      eval_max_batches=config.train.eval_max_batches, seed=config.seed,
      process_index=jax.process_index(), process_count=num_hosts)
  return Task(
      params=param_spec(config),
      loss_fn=make_loss_fn(config, byte_lengths),
      train_data=train_data,
      eval_data=eval_data,
      eval_metrics=eval_metrics,
      throughput_unit="tokens",
      units_per_example=seq_len,
  )


def sample(config, params, workdir: str, request) -> str:
  """gen_jax.sample --workdir: `generate_text` with the workdir's model and tokenizer."""
  model_config, params = inference_params(config, params)
  return llm_text.generate_text(model_config, params, data_lib.Tokenizer.load(workdir), request)


def export_workdir(workdir: str, hf_dir: str) -> None:
  """Writes a workdir's model (`inference_params`: adapters folded in, a student alone) with its
  tokenizer as a Hugging Face directory (gen_jax.export)."""
  from gen_jax import families, interop
  from gen_jax.train.workdir import load_workdir_params
  config, params = load_workdir_params(workdir)
  family = families.get(config.family)
  if not hasattr(family, "inference_params"):
    raise ConfigError("--workdir", f"{workdir!r} holds a {config.family} model; only language "
                      "models have a Hugging Face layout")
  model_config, params = family.inference_params(config, params)
  interop.export_hf(hf_dir, model_config, params, data_lib.Tokenizer.load(workdir))
  print(f"Wrote {hf_dir}")
