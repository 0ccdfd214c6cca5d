"""How a diffusion model is conditioned: on class labels (a label embedding with a null class), or
on text through cross-attention over a frozen language model's token states (Rombach et al.,
2022; Saharia et al., 2022, who showed a frozen text-only LM works as the encoder).

Both give the backbone keyword arguments per image ({"labels"} or {"context", "context_mask"}),
so training (with condition dropout) and classifier-free guidance treat them alike. With a text
encoder, labelled data is captioned from its class names (text.caption_template), and the
captions' states are computed once, as a table [num_classes, max_tokens, width] the loss indexes
by label; the null condition is the all-masked context. Sampling takes free text (--prompt).
"""
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.config.errors import require
from gen_jax.families import llm_sources
from gen_jax.models.transformer import Transformer

CAPTIONS_FILE = "captions.json"  # The class captions a text-conditioned run trained on.


@dataclasses.dataclass(frozen=True)
class TextEncoder:
  """A frozen language model whose final normed hidden states are the context."""
  net: Transformer
  params: dict
  tokenizer: object
  max_tokens: int

  @property
  def width(self) -> int:
    return self.net.config.embed_dim

  def encode(self, texts: list[str], field: str) -> tuple[np.ndarray, np.ndarray]:
    """(context [n, max_tokens, width] float32, mask [n, max_tokens] bool): each text's token
    states, padded at the end. The LM is causal, so padding never changes a real token's state."""
    ids = [self.tokenizer.encode(text) for text in texts]
    for text, row in zip(texts, ids):
      require(0 < len(row) <= self.max_tokens, field,
              f"{text!r} is {len(row)} tokens; text.max_tokens is {self.max_tokens}")
    tokens = np.zeros((len(ids), self.max_tokens), np.int32)
    mask = np.zeros((len(ids), self.max_tokens), bool)
    for i, row in enumerate(ids):
      tokens[i, :len(row)], mask[i, :len(row)] = row, True
    states = _hidden(self.net, self.params, jnp.asarray(tokens))
    return np.asarray(jax.device_get(states), np.float32) * mask[..., None], mask


@functools.partial(jax.jit, static_argnums=0)
def _hidden(net, params, tokens):
  return net.apply({"params": params}, tokens, outputs="hidden")


def load_encoder(config) -> TextEncoder:
  """config.text.encoder as a TextEncoder; ConfigError naming model.context_dim unless that is
  the encoder's width."""
  loaded = llm_sources.load(config.text.encoder, "text.encoder")
  encoder = TextEncoder(Transformer(loaded.config), loaded.params, loaded.tokenizer,
                        config.text.max_tokens)
  require(config.model.context_dim == encoder.width, "model.context_dim",
          f"{config.model.context_dim}, but text.encoder's token states are {encoder.width} wide "
          f"(set model.context_dim={encoder.width})")
  return encoder


@dataclasses.dataclass(frozen=True)
class Conditioning:
  """Per-image backbone keyword arguments from class labels.

  num_classes: the labels' classes (0: unconditional). With a caption table (context [num_classes,
  s, width], context_mask [num_classes, s]) a label means its class's caption; otherwise it feeds
  the backbone's label embedding, whose null class is num_classes.
  """
  num_classes: int = 0
  context: np.ndarray | None = None
  context_mask: np.ndarray | None = None

  def of_labels(self, labels: jax.Array, dropped: jax.Array | None = None) -> dict:
    """labels [b] int32 (dropped [b] bool: those images get the null condition) -> kwargs."""
    if not self.num_classes:
      return {}
    if self.context is None:
      if dropped is not None:
        labels = jnp.where(dropped, self.num_classes, labels)
      return {"labels": labels}
    mask = jnp.asarray(self.context_mask)[labels]
    if dropped is not None:
      mask = mask & ~dropped[:, None]
    return {"context": jnp.asarray(self.context)[labels], "context_mask": mask}

  def null(self, count: int) -> dict:
    """The unconditional kwargs for `count` images (the null class, or an all-masked context)."""
    if not self.num_classes:
      return {}
    if self.context is None:
      return {"labels": jnp.full((count,), self.num_classes, jnp.int32)}
    return {"context": jnp.zeros((count, *self.context.shape[1:]), jnp.float32),
            "context_mask": jnp.zeros((count, self.context.shape[1]), bool)}


def captions(config, class_names) -> list[str]:
  require(len(class_names) > 0, "text.encoder",
          f"the data ({config.data.source!r}) has no class names to caption")
  return [config.text.caption_template.format(name) for name in class_names]


def for_training(config, class_names, workdir: str) -> Conditioning:
  """The run's conditioning; a text-conditioned run saves its captions in the workdir."""
  if not config.text.encoder:
    return Conditioning(config.model.num_classes)
  texts = captions(config, class_names)
  context, mask = load_encoder(config).encode(texts, "text.caption_template")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CAPTIONS_FILE), "w") as f:
      json.dump(texts, f, indent=1)
  return Conditioning(len(texts), context, mask)


def saved_captions(workdir: str) -> list[str]:
  path = os.path.join(workdir, CAPTIONS_FILE)
  require(os.path.exists(path), "--workdir", f"{workdir!r} has no {CAPTIONS_FILE}: not a "
          "text-conditioned diffusion run's workdir")
  with open(path) as f:
    return json.load(f)
