"""Conversations and preference pairs: chatterbot-corpus, JSONL files, and errors for bad lines."""
import importlib.util
import json

import pytest

from gen_jax.config import ConfigError
from gen_jax.data.conversations import (PreferencePair, load_conversations, load_preference_pairs,
                                        split_items)

FIELD = "data.sft_source"


def _write_jsonl(path, rows):
  """Writes rows (objects, or raw strings written as is) one per line; returns the path as str."""
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def chatterbot():
  return load_conversations("chatterbot", FIELD)


def test_chatterbot_is_real_alternating_dialogue(chatterbot):
  conversations = chatterbot
  assert len(conversations) > 1000
  for conversation in conversations:
    assert len(conversation) >= 2 and len(conversation) % 2 == 0
    assert [m["role"] for m in conversation] == ["user", "assistant"] * (len(conversation) // 2)
    for message in conversation:
      assert isinstance(message["content"], str) and message["content"] == message["content"].strip()
      assert message["content"]
  # Sorted file names put ai.yml first; its first dialogue opens the list.
  assert conversations[0][0] == {"role": "user", "content": "What is AI?"}
  assert conversations[0][1]["content"].startswith("Artificial Intelligence")
  assert load_conversations("chatterbot", FIELD) == conversations


def test_chatterbot_odd_turn_count_drops_the_unanswered_question(chatterbot):
  # Several corpus dialogues have an odd number of turns; check one survives as user-first pairs.
  import yaml
  folder = importlib.util.find_spec("chatterbot_corpus").submodule_search_locations[0]
  raw = []
  for name in ("conversations", "greetings", "emotion", "psychology"):
    with open(f"{folder}/data/english/{name}.yml", encoding="utf-8") as f:
      raw += yaml.safe_load(f)["conversations"]
  odd = next(c for c in raw if isinstance(c, list) and len(c) % 2 == 1 and len(c) >= 3)
  expected = [str(t).strip() for t in odd[:-1]]
  loaded = [[m["content"] for m in c] for c in chatterbot]
  assert expected in loaded


def test_missing_chatterbot_says_how_to_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "chatterbot_corpus" else real(name, *a))
  with pytest.raises(ConfigError, match=r"data.sft_source: .*pip install --no-deps chatterbot-corpus"):
    load_conversations("chatterbot", FIELD)


def test_jsonl_round_trip_keeps_content_verbatim(tmp_path):
  rows = [{"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi "},
                        {"role": "assistant", "content": " Hello.\n"}]},
          {"messages": [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4", "name": "bot"}]}]
  path = tmp_path / "chat.jsonl"
  path.write_text(json.dumps(rows[0]) + "\n\n   \n" + json.dumps(rows[1]) + "\n")
  loaded = load_conversations(str(path), FIELD)
  assert loaded[0] == rows[0]["messages"]
  assert loaded[1] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


@pytest.mark.parametrize("bad_line, message", [
    ('{"messages": [', r"bad.jsonl:2: not JSON"),
    ('[1, 2]', r"bad.jsonl:2: expected a JSON object, got list"),
    ('{"msgs": []}', r"bad.jsonl:2: no 'messages' key"),
    ('{"messages": "hi"}', r"bad.jsonl:2: 'messages' must be a non-empty list"),
    ('{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     r"bad.jsonl:2: messages\[0\] has role 'bot'; expected one of system, user, assistant"),
    ('{"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "y"}]}',
     r"bad.jsonl:2: messages\[0\] \(user\) has content of type int"),
    ('{"messages": [{"role": "user", "content": "x"}]}', r"bad.jsonl:2: no assistant turn"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}, '
     '{"role": "assistant", "content": "y"}]}',
     r"bad.jsonl:2: messages\[1\] is a system message; only the first"),
])
def test_jsonl_errors_name_field_file_and_line(tmp_path, bad_line, message):
  good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
  path = _write_jsonl(tmp_path / "bad.jsonl", [good, bad_line])
  with pytest.raises(ConfigError, match=f"^{FIELD}: .*{message}") as info:
    load_conversations(path, FIELD)
  assert info.value.field == FIELD


def test_unknown_source_missing_and_empty_files(tmp_path):
  with pytest.raises(ConfigError, match=r"data.sft_source: unknown conversation source 'chat.txt'; "
                     r"expected 'chatterbot' or a path to a .jsonl"):
    load_conversations("chat.txt", FIELD)
  with pytest.raises(ConfigError, match=r"data.sft_source: no such file: '/nonexistent/c.jsonl' "
                     r"\(expected 'chatterbot' or a path to a .jsonl"):
    load_conversations("/nonexistent/c.jsonl", FIELD)
  (tmp_path / "empty.jsonl").write_text("\n  \n")
  with pytest.raises(ConfigError, match="holds no records"):
    load_conversations(str(tmp_path / "empty.jsonl"), FIELD)


def test_preference_pairs_with_string_and_messages_prompts(tmp_path):
  messages_prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]
  path = _write_jsonl(tmp_path / "prefs.jsonl", [
      {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
      {"prompt": messages_prompt, "chosen": "Hello!", "rejected": "Go away."}])
  pairs = load_preference_pairs(path, "data.preference_source")
  assert pairs == [
      PreferencePair(prompt=[{"role": "user", "content": "What is 2 + 2?"}], chosen="4", rejected="5"),
      PreferencePair(prompt=messages_prompt, chosen="Hello!", rejected="Go away.")]


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "q", "chosen": "a"}, r"p.jsonl:2: missing key\(s\) \['rejected'\]"),
    ({"prompt": "q", "chosen": 1, "rejected": "b"}, r"p.jsonl:2: 'chosen' must be a string, got int"),
    ({"prompt": "q", "chosen": "a", "rejected": None}, r"p.jsonl:2: 'rejected' must be a string"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, r"p.jsonl:2: 'chosen' and 'rejected' are the same"),
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, r"p.jsonl:2: 'prompt' must be a non-empty list"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}],
      "chosen": "a", "rejected": "b"}, r"p.jsonl:2: 'prompt' ends in a assistant turn"),
    ({"prompt": [{"role": "human", "content": "q"}], "chosen": "a", "rejected": "b"},
     r"p.jsonl:2: prompt\[0\] has role 'human'"),
])
def test_preference_errors_name_field_line_and_key(tmp_path, bad, message):
  good = {"prompt": "q", "chosen": "a", "rejected": "b"}
  path = _write_jsonl(tmp_path / "p.jsonl", [good, bad])
  with pytest.raises(ConfigError, match=f"^data.preference_source: .*{message}"):
    load_preference_pairs(path, "data.preference_source")


def test_preference_missing_file_and_bad_json(tmp_path):
  with pytest.raises(ConfigError, match=r"data.preference_source: no such file: 'nope.jsonl'"):
    load_preference_pairs("nope.jsonl", "data.preference_source")
  path = _write_jsonl(tmp_path / "p.jsonl", ['{"prompt": "q", "chosen": "a", "rejected": "b"}', "oops"])
  with pytest.raises(ConfigError, match=r"p.jsonl:2: not JSON"):
    load_preference_pairs(path, "data.preference_source")


def test_split_items_holds_out_the_tail():
  items = list(range(10))
  assert split_items(items, 0.2) == ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
  assert split_items(items, 0.0) == (items, [])
  assert split_items([1, 2], 0.01) == ([1], [2])  # At least one each once there are two.
  assert split_items([1, 2, 3], 0.9) == ([1], [2, 3])
  assert split_items([1, 2], 0.99) == ([1], [2])  # Never an empty train set.
  assert split_items([7], 0.5) == ([7], [])
  with pytest.raises(ValueError, match="eval_fraction must be in"):
    split_items(items, 1.0)
