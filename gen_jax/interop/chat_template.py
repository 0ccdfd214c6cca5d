"""Chat templates: a model's jinja2 template rendered as transformers' `apply_chat_template` does.

Following transformers (utils/chat_template_utils.py): a sandboxed environment (templates come with
downloaded checkpoints, so they are untrusted code) with trim_blocks and lstrip_blocks, the
`loopcontrols` extension, `raise_exception`, `strftime_now`, and a `tojson` that does not escape
HTML; the template sees `messages`, `add_generation_prompt` and the special tokens by name
(`bos_token`, `eos_token`, `pad_token`).
"""
import datetime
import functools
import json

import jinja2
import jinja2.ext
import jinja2.sandbox

# A message content no template changes, to find where an assistant turn's text ends.
_SENTINEL = "gen_jax-end-of-turn-probe"


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                     extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(template)


def conversation(prompt: str, system: str = "") -> list[dict]:
  """[{"role", "content"}]: the system instruction (when given), then `prompt` as the user turn."""
  return ([{"role": "system", "content": system}] if system else []) + [
      {"role": "user", "content": prompt}]


def render(template: str, messages: list[dict], *, special_tokens: dict[str, str | None],
           add_generation_prompt: bool = True) -> str:
  """The conversation as the model reads it.

  Args:
    template: the jinja2 chat template.
    messages: [{"role": "system" | "user" | "assistant", "content": str}, ...].
    special_tokens: {"bos_token": ..., "eos_token": ..., "pad_token": ...}, the names the
      template uses.
    add_generation_prompt: end with the header of an assistant turn, for the model to write it.
  Raises:
    ValueError: the template raised (e.g. roles that do not alternate), with its message.
  """
  try:
    return _compile(template).render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **special_tokens)
  except jinja2.exceptions.TemplateError as e:
    raise ValueError(f"chat template: {e}") from e


def end_of_turn_token(template: str, special_tokens: dict[str, str | None],
                      added_tokens: list[str]) -> str | None:
  """The token the template closes an assistant turn with (ChatML's `<|im_end|>`, Llama 3's
  `<|eot_id|>`, `</s>`), or None where the template writes none of `added_tokens` there.

  The model ends its reply by writing this token, so chat generation stops at it.
  """
  messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
  try:
    text = render(template, messages, special_tokens=special_tokens, add_generation_prompt=False)
  except ValueError:
    return None
  if _SENTINEL not in text:
    return None
  after = text[text.find(_SENTINEL) + len(_SENTINEL):].lstrip()
  found = [token for token in added_tokens if token and after.startswith(token)]
  return max(found, key=len) if found else None


def chat_prompt(tokenizer, prompt: str, system: str = "") -> tuple[str, int | None]:
  """(the conversation `prompt` (+ `system`) rendered with the tokenizer's chat template and ending
  in an assistant turn's header, the id of the end-of-turn token or None).

  Args:
    tokenizer: a `gen_jax.data.Tokenizer` with a chat_template.
  Raises:
    ValueError: the tokenizer has no chat template, or the template refused the conversation.
  """
  if tokenizer.chat_template is None:
    raise ValueError("--chat: the tokenizer has no chat template (tokenizers gen_jax trains have "
                     "ChatML's since the SFT stage landed; an older workdir's has none)")
  specials = tokenizer.special_tokens
  text = render(tokenizer.chat_template, conversation(prompt, system), special_tokens=specials)
  end = end_of_turn_token(tokenizer.chat_template, specials, tokenizer.added_tokens)
  return text, None if end is None else tokenizer.hf.token_to_id(end)


def encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
  """A conversation as training tokens: (token ids, loss mask), the mask 1 on each assistant
  turn's tokens as the model writes them: its text and the end-of-turn token (ChatML's
  `<|im_end|>`, where generation stops), not what the template writes after it.

  Each assistant turn is the text the template adds between rendering the conversation before it
  with the generation prompt (exactly what the model is prompted with at inference) and rendering
  it with the turn; every piece is tokenized on its own, so the prompt's tokens are those a chat
  request sends.

  Args:
    tokenizer: a `gen_jax.data.Tokenizer` with a chat_template.
    messages: [{"role", "content"}], with at least one assistant turn.
  Raises:
    ValueError: no chat template, or a template whose assistant turn does not extend its prompt.
  """
  if tokenizer.chat_template is None:
    raise ValueError("the tokenizer has no chat template (a tokenizer gen_jax trains has ChatML's; "
                     "a pretrained model must ship one)")
  specials = tokenizer.special_tokens
  end = end_of_turn_token(tokenizer.chat_template, specials, tokenizer.added_tokens)
  end_id = None if end is None else tokenizer.hf.token_to_id(end)
  rendered, ids, mask = "", [], []

  def add(text: str, weight: int) -> None:
    piece = tokenizer.encode(text, add_special_tokens=False) if text else []
    weights = [weight] * len(piece)
    if weight and end_id in piece:  # The model stops writing at the end-of-turn token.
      stop = piece.index(end_id) + 1
      weights = weights[:stop] + [0] * (len(piece) - stop)
    ids.extend(piece)
    mask.extend(weights)

  for i, message in enumerate(messages):
    if message["role"] != "assistant":
      continue
    prompt = render(tokenizer.chat_template, messages[:i], special_tokens=specials)
    turn = render(tokenizer.chat_template, messages[:i + 1], special_tokens=specials,
                  add_generation_prompt=False)
    if not (prompt.startswith(rendered) and turn.startswith(prompt)):
      raise ValueError(f"chat template: rendering assistant turn {i} does not extend the "
                       "conversation before it with the generation prompt, so its tokens cannot be "
                       "told from the prompt's")
    add(prompt[len(rendered):], 0)
    add(turn[len(prompt):], 1)
    rendered = turn
  whole = render(tokenizer.chat_template, messages, special_tokens=specials,
                 add_generation_prompt=False)
  add(whole[len(rendered):], 0)
  return ids, mask
