"""Conversations as plain text: each `{"messages": [...]}` record of IN rendered by the chat
template of the tokenizer in MODEL_DIR (transformers), written to OUT as `{"text": ...}`, so
`qlora eval --format text` and transformers score the same tokens.

    PEER_PY examples/chat_as_text.py MODEL_DIR IN.jsonl OUT.jsonl
"""
import json
import sys

from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(sys.argv[1])
with open(sys.argv[2]) as src, open(sys.argv[3], "w") as out:
    for line in src:
        text = tok.apply_chat_template(json.loads(line)["messages"], tokenize=False)
        out.write(json.dumps({"text": text}) + "\n")
