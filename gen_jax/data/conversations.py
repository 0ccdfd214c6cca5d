"""Chat data for the alignment stages: conversations (SFT) and preference pairs (reward model, DPO).

A message is `{"role": "system" | "user" | "assistant", "content": str}`; a conversation is a list
of messages, an optional system message first. Sources: `chatterbot` (the English chatterbot-corpus
dialogues, installed from PyPI) or a local JSONL file, one object per line.
"""
import dataclasses
import glob
import importlib.util
import json
import os
from typing import Any, Sequence

from gen_jax.config.errors import ConfigError

ROLES = ("system", "user", "assistant")

_SOURCES = "'chatterbot' or a path to a .jsonl file of {\"messages\": [...]} objects"


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """One prompt with a preferred and a dispreferred answer.

  prompt: the conversation so far, a list of messages ending in a user turn (a list, not a tuple,
    so it feeds chat templates as is; the fields cannot be rebound, but the pair is not hashable).
  chosen: the preferred assistant reply, plain text.
  rejected: the dispreferred assistant reply, plain text; never equal to `chosen`.
  """
  prompt: list[dict]
  chosen: str
  rejected: str


def _chatterbot_conversations(field: str) -> list[list[dict]]:
  spec = importlib.util.find_spec("chatterbot_corpus")
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError(field, "source 'chatterbot' needs the chatterbot-corpus package: "
                      "pip install --no-deps chatterbot-corpus")
  import yaml  # Only this source needs it.
  # libyaml's safe loader parses the corpus several times faster than the pure-Python one.
  loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
  folder = os.path.join(spec.submodule_search_locations[0], "data", "english")
  paths = sorted(glob.glob(os.path.join(folder, "*.yml")))
  if not paths:
    raise ConfigError(field, f"chatterbot-corpus has no English files in {folder}; reinstall it: "
                      "pip install --no-deps chatterbot-corpus")
  conversations = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      entries = yaml.load(f, Loader=loader)["conversations"]
    for turns in entries:
      # trivia.yml has one entry whose YAML lost its inner list (a lone string): it is no dialogue.
      if not isinstance(turns, list):
        continue
      turns = [str(t).strip() for t in turns]
      turns = turns[:len(turns) - len(turns) % 2]  # A last question nobody answered teaches nothing.
      if not turns:
        continue
      conversations.append([{"role": ROLES[1 + i % 2], "content": t} for i, t in enumerate(turns)])
  return conversations


def _check_messages(messages: Any, where: str, key: str, field: str) -> list[dict]:
  """Validates a JSON messages list; returns copies holding only role and content.

  `where` is `path:line` and `key` the JSON key holding the list, both for error messages.
  """
  if not isinstance(messages, list) or not messages:
    raise ConfigError(field, f"{where}: {key!r} must be a non-empty list of "
                      f"{{\"role\", \"content\"}} objects, got {type(messages).__name__}")
  checked = []
  for i, message in enumerate(messages):
    at = f"{where}: {key}[{i}]"
    if not isinstance(message, dict):
      raise ConfigError(field, f"{at} must be an object with 'role' and 'content', "
                        f"got {type(message).__name__}")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
      raise ConfigError(field, f"{at} has role {role!r}; expected one of {', '.join(ROLES)}")
    if not isinstance(content, str):
      raise ConfigError(field, f"{at} ({role}) has content of type {type(content).__name__}; "
                        "expected a string")
    if role == "system" and i != 0:
      raise ConfigError(field, f"{at} is a system message; only the first message may be one")
    checked.append({"role": role, "content": content})
  return checked


def _jsonl_objects(path: str, field: str, expected: str) -> list[tuple[str, dict]]:
  """Reads a JSONL file into (`path:line`, object) pairs, skipping blank lines; line is 1-based."""
  if not os.path.isfile(path):
    raise ConfigError(field, f"no such file: {path!r} (expected {expected})")
  with open(path, "rb") as f:
    raw_lines = f.read().split(b"\n")
  objects = []
  for number, raw in enumerate(raw_lines, start=1):
    where = f"{path}:{number}"
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise ConfigError(field, f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                        f"{e.start + 1})") from None
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise ConfigError(field, f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
      raise ConfigError(field, f"{where}: expected a JSON object, got {type(obj).__name__}")
    objects.append((where, obj))
  if not objects:
    raise ConfigError(field, f"{path} holds no records (empty file)")
  return objects


def _jsonl_conversations(path: str, field: str) -> list[list[dict]]:
  conversations = []
  for where, obj in _jsonl_objects(path, field, _SOURCES):
    if "messages" not in obj:
      raise ConfigError(field, f"{where}: no 'messages' key (keys are {sorted(obj)})")
    messages = _check_messages(obj["messages"], where, "messages", field)
    if not any(m["role"] == "assistant" for m in messages):
      raise ConfigError(field, f"{where}: no assistant turn, so nothing to learn from")
    conversations.append(messages)
  return conversations


def load_conversations(source: str, field: str) -> list[list[dict]]:
  """Reads every conversation of `source`, in a fixed order.

  Args:
    source: "chatterbot" (English chatterbot-corpus dialogues: turns alternate user, assistant, ...,
      content stripped; files in sorted name order, conversations in file order) or a path ending in
      ".jsonl" with one `{"messages": [message, ...]}` object per line (blank lines skipped; content
      kept verbatim; each conversation needs an assistant turn; a system message may only come first).
    field: the config field that named `source`, for error messages.
  Returns:
    A list of conversations, each a list of `{"role", "content"}` dicts.
  Raises:
    ConfigError(field, ...) for an unknown source, a missing file, or a bad line (named `path:line`).
  """
  if source == "chatterbot":
    return _chatterbot_conversations(field)
  if source.endswith(".jsonl"):
    return _jsonl_conversations(os.path.expanduser(source), field)
  raise ConfigError(field, f"unknown conversation source {source!r}; expected {_SOURCES}")


def load_preference_pairs(path: str, field: str) -> list[PreferencePair]:
  """Reads preference pairs from a JSONL file, one object per line (blank lines skipped).

  Each line is `{"prompt": str | [message, ...], "chosen": str, "rejected": str}`; a string prompt
  becomes one user message; a messages prompt must end in a user turn. `chosen` must differ from
  `rejected`. Raises ConfigError(field, ...) naming `path:line` and the bad key.
  """
  expected = 'a .jsonl file of {"prompt", "chosen", "rejected"} objects'
  pairs = []
  for where, obj in _jsonl_objects(os.path.expanduser(path), field, expected):
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in obj]
    if missing:
      raise ConfigError(field, f"{where}: missing key(s) {missing} (keys are {sorted(obj)})")
    prompt = obj["prompt"]
    if isinstance(prompt, str):
      prompt = [{"role": "user", "content": prompt}]
    else:
      prompt = _check_messages(prompt, where, "prompt", field)
      if prompt[-1]["role"] != "user":
        raise ConfigError(field, f"{where}: 'prompt' ends in a {prompt[-1]['role']} turn; "
                          "it must end in a user turn for the answers to reply to")
    for key in ("chosen", "rejected"):
      if not isinstance(obj[key], str):
        raise ConfigError(field, f"{where}: {key!r} must be a string, got {type(obj[key]).__name__}")
    if obj["chosen"] == obj["rejected"]:
      raise ConfigError(field, f"{where}: 'chosen' and 'rejected' are the same text, so the pair "
                        "says nothing")
    pairs.append(PreferencePair(prompt=prompt, chosen=obj["chosen"], rejected=obj["rejected"]))
  return pairs


def split_items(items: Sequence, eval_fraction: float) -> tuple[list, list]:
  """Holds out the last `eval_fraction` of `items` for evaluation, keeping order.

  The held-out count is round(len * eval_fraction), clamped so both parts get at least one item
  when there are two or more and `eval_fraction` > 0. With fewer than two items, all go to train.
  Raises ValueError unless 0 <= eval_fraction < 1.
  """
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
  items = list(items)
  num_eval = int(round(len(items) * eval_fraction))
  if eval_fraction > 0 and len(items) >= 2:
    num_eval = min(max(num_eval, 1), len(items) - 1)
  elif len(items) < 2:
    num_eval = 0
  cut = len(items) - num_eval
  return items[:cut], items[cut:]
