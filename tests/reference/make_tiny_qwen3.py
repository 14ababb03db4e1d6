#!/usr/bin/env python3
"""Make tests/reference/tiny-qwen3: a tiny Qwen3ForCausalLM (per-head q/k RMSNorm, head_dim
independent of hidden/heads, tied embeddings, one full and one sliding-window layer) with random
bf16 weights, and what transformers and peft compute on it in float32.

Run with the peer stack of ../shared/bench/README.md (torch, transformers, peft):
    ~/.cache/qlora-peer/bin/python tests/reference/make_tiny_qwen3.py
It writes the directory next to this script; the tokenizer is tiny-llama's fixture tokenizer.
"""
import json
import os
import shutil

import torch
import transformers
import peft
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "tiny-qwen3")
fixtures = os.path.join(here, "..", "fixtures", "tiny-llama")
os.makedirs(out, exist_ok=True)

torch.manual_seed(0)
config = Qwen3Config(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    hidden_act="silu",
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    attention_bias=False,
    use_sliding_window=True,
    sliding_window=6,
    max_window_layers=1,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    dtype="bfloat16",
)
assert config.layer_types == ["full_attention", "sliding_attention"], config.layer_types
model = Qwen3ForCausalLM(config)
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            # Norm weights away from 1, so a norm applied wrongly (or not at all) shows.
            p.copy_(1.0 + 0.3 * torch.randn_like(p))
        else:
            p.copy_(0.08 * torch.randn_like(p))
model = model.to(torch.bfloat16)
model.save_pretrained(out)
for name in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(os.path.join(fixtures, name), os.path.join(out, name))

# float32 compute from the bf16 weights.
model = Qwen3ForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
model.eval()
gen = torch.Generator().manual_seed(1)
input_ids = torch.randint(3, 1024, (2, 16), generator=gen)
with torch.no_grad():
    base = model(input_ids, labels=input_ids)

# A PEFT adapter with random non-zero A and B on all seven projections, and the gradients of
# the mean next-token loss with respect to them.
lora = peft.LoraConfig(
    r=4,
    lora_alpha=8,
    lora_dropout=0.0,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    init_lora_weights=False,
)
tuned = peft.get_peft_model(model, lora)
torch.manual_seed(2)
with torch.no_grad():
    for name, p in tuned.named_parameters():
        if "lora_" in name:
            p.copy_(0.1 * torch.randn_like(p))
tuned.save_pretrained(os.path.join(out, "adapter"))
tuned.train()  # dropout is 0: the same numbers, with gradients
result = tuned(input_ids, labels=input_ids)
result.loss.backward()
tensors = {
    "input_ids": input_ids.contiguous(),
    "logits": base.logits.contiguous(),
    "loss": base.loss.reshape(1),
    "lora_logits": result.logits.detach().contiguous(),
    "lora_loss": result.loss.detach().reshape(1),
}
for name, p in tuned.named_parameters():
    if "lora_" in name:
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
        short = name.replace("base_model.model.", "").replace(".default.weight", "")
        tensors[f"grad.{short}"] = p.grad.contiguous()
save_file(tensors, os.path.join(out, "reference.safetensors"))
with open(os.path.join(out, "README.md"), "w") as f:
    f.write(
        "Made by `../make_tiny_qwen3.py` with torch %s, transformers %s, peft %s. "
        "`reference.safetensors`: `input_ids` [2,16]; `logits`, `loss` of the model (float32 "
        "compute, eager attention, labels = input_ids); `lora_logits`, `lora_loss` with the "
        "adapter in `adapter/`; `grad.MODULE.lora_A|lora_B`: gradients of `lora_loss` (the mean "
        "over 30 targets).\n" % (torch.__version__, transformers.__version__, peft.__version__)
    )
print("wrote", out, {k: tuple(v.shape) for k, v in list(tensors.items())[:5]})
