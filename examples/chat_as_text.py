"""Conversations as plain text: each `{"messages": [...]}` record of IN rendered by the chat
template of the tokenizer in MODEL_DIR (transformers), written to OUT as `{"text": ...}`, so
`qlora eval --format text` and transformers score the same tokens. A base model without a
template (Gemma 3 270M) gets a plain transcript: `Role: content` lines, a blank line after each
conversation.

    PEER_PY examples/chat_as_text.py MODEL_DIR IN.jsonl OUT.jsonl
"""
import json
import sys

from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(sys.argv[1])
with open(sys.argv[2]) as src, open(sys.argv[3], "w") as out:
    for line in src:
        messages = json.loads(line)["messages"]
        if tok.chat_template:
            text = tok.apply_chat_template(messages, tokenize=False)
        else:
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "\n"
        out.write(json.dumps({"text": text}) + "\n")
