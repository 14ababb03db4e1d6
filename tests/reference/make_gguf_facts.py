#!/usr/bin/env python3
"""What transformers makes of a real GGUF checkpoint (`gguf_file=`, dequantized to float32), as
a JSON file of facts the tests hold `qlora import-gguf` against:

    ~/.cache/qlora-peer/bin/python tests/reference/make_gguf_facts.py \
        tests/models/Qwen2.5-Coder-0.5B-Instruct.gguf tests/reference/qwen2.5_gguf_facts.json

Facts: the file's sha256; `config` (the config.json transformers builds); `tokenizer_cases`
(text -> ids without special tokens); `chat_messages`, `chat_prompt` and `chat_prompt_ids`
(the model's own template, with the generation prompt; for a file without a template,
`chat_messages` is null and the prompt a plain text with BOS); `greedy_new_ids` and `greedy_text` (32
greedy tokens after the chat prompt); `loss_text`, `loss_ids` and `loss` (the mean next-token
loss over those ids, float32); `last_logits_top5` (of the chat prompt's last position);
`weights_first8` (the first 8 values of some tensors, Hugging Face names and layout).
"""
import hashlib
import json
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

path, out = sys.argv[1], sys.argv[2]
directory, name = path.rsplit("/", 1)
sha = hashlib.sha256(open(path, "rb").read()).hexdigest()

tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(
    directory, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
)
model.eval()

cases = [
    "Hello, world!",
    "The year 2024 had 366 days.",
    "  multiple   spaces\tand\ttabs\n\nnew lines",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Ünïcödé: 東京, Привет, 🙂 and café",
    "<|im_start|>user\nhi<|im_end|>",
]
if model.config.model_type.startswith("gemma"):
    cases.append("<start_of_turn>user\nhi<end_of_turn>\n")

tokenizer_cases = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in cases}

messages = [{"role": "user", "content": "Write a Python function that reverses a string."}]
if tokenizer.chat_template:
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
else:
    # A file without a chat template (a base model): a plain prompt, with the BOS the
    # tokenizer adds.
    prompt = "The three primary colors are"
    prompt_ids = tokenizer(prompt)["input_ids"]
with torch.no_grad():
    ids = torch.tensor([prompt_ids])
    last = model(ids).logits[0, -1]
    top = torch.topk(last, 5)
    generated = model.generate(ids, max_new_tokens=32, do_sample=False, num_beams=1)
new_ids = generated[0, len(prompt_ids):].tolist()

loss_text = (
    "Binary search finds an item in a sorted list by halving the range on each step. "
    "It compares the target with the middle element: if they are equal the search ends, "
    "if the target is smaller it continues in the lower half, otherwise in the upper half."
)
loss_ids = tokenizer(loss_text, add_special_tokens=False)["input_ids"]
with torch.no_grad():
    t = torch.tensor([loss_ids])
    loss = model(t, labels=t).loss.item()

state = model.state_dict()
weights = {}
for key in [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.q_proj.bias",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.q_norm.weight",
    "model.layers.0.post_feedforward_layernorm.weight",
    "model.norm.weight",
]:
    if key in state:
        weights[key] = state[key].flatten()[:8].tolist()

facts = {
    "source": f"{name} loaded by transformers {transformers.__version__} (gguf_file=...), "
    f"torch {torch.__version__}, float32, eager attention",
    "gguf_sha256": sha,
    "config": json.loads(model.config.to_json_string()),
    "tokenizer_cases": tokenizer_cases,
    "chat_messages": messages if tokenizer.chat_template else None,
    "chat_prompt": prompt,
    "chat_prompt_ids": prompt_ids,
    "greedy_new_ids": new_ids,
    "greedy_text": tokenizer.decode(new_ids),
    "loss_text": loss_text,
    "loss_ids": loss_ids,
    "loss": loss,
    "last_logits_top5": {"ids": top.indices.tolist(), "values": top.values.tolist()},
    "weights_first8": weights,
}
with open(out, "w") as f:
    json.dump(facts, f, indent=1, ensure_ascii=False)
    f.write("\n")
print("wrote", out, "loss", loss, "greedy", repr(facts["greedy_text"]))
