#!/usr/bin/env python3
"""Make tests/reference/tiny-ARCH: a tiny transformers model of one architecture with random
bf16 weights, and what transformers, peft and bitsandbytes compute on it in float32.

    ~/.cache/qlora-peer/bin/python tests/reference/make_tiny_model.py qwen2

Run with the peer stack of ../shared/bench/README.md (torch, transformers, peft, bitsandbytes).
It writes, next to this script:
- tiny-ARCH/: the model (`save_pretrained`), tiny-llama's fixture tokenizer, `adapter/` (a PEFT
  LoRA adapter, r 4, alpha 8, on every linear layer, random non-zero A and B) and
  `reference.safetensors`: `input_ids` [2,16]; `logits`, `loss` of the model (labels =
  input_ids, eager attention); for phi3 `short_logits` of the first 8 tokens (LongRoPE's
  short factors); `lora_logits`, `lora_loss` with the adapter;
  `grad.MODULE.lora_A|lora_B`, the gradients of `lora_loss`; `merged_logits`, `merged_loss`
  after peft's `merge_and_unload()`;
- tiny-ARCH-bnb-nf4/: the model loaded by transformers with bitsandbytes NF4 double
  quantization (float32 compute) and saved, with `reference.safetensors` holding its `logits`
  and `loss`.
"""
import json
import os
import shutil
import sys

import bitsandbytes
import peft
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "fixtures", "tiny-llama")

COMMON = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    dtype="bfloat16",
)

# What each architecture's tiny model tests beyond LLaMA's layer.
ARCHS = {
    # A sliding window of 6 keys on every layer, over sequences of 16 tokens; untied head.
    "mistral": lambda: transformers.MistralConfig(
        **COMMON,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        sliding_window=6,
    ),
    # q/k/v biases (not o), tied embeddings, a full and a sliding-window layer.
    "qwen2": lambda: transformers.Qwen2Config(
        **COMMON,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=True,
        sliding_window=6,
        max_window_layers=1,
    ),
    # Per-head q/k RMSNorm, head_dim independent of hidden/heads, tied embeddings, a full and
    # a sliding-window layer.
    "qwen3": lambda: transformers.Qwen3Config(
        **COMMON,
        head_dim=32,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        attention_bias=False,
        use_sliding_window=True,
        sliding_window=6,
        max_window_layers=1,
    ),
    # Gemma 3: (1 + w) norms, four a layer and on q/k heads, GeGLU, embeddings scaled by
    # sqrt(hidden), scores by query_pre_attn_scalar (24, not head_dim 32), Gemma's pattern of
    # five sliding-window layers (6 keys) with a local RoPE base, then a global layer with
    # linear RoPE scaling; tied embeddings.
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **{k: v for k, v in COMMON.items() if k not in ("hidden_act", "num_hidden_layers")},
        num_hidden_layers=6,
        hidden_activation="gelu_pytorch_tanh",
        head_dim=32,
        query_pre_attn_scalar=24,
        tie_word_embeddings=True,
        sliding_window=6,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
    ),
    # Phi-3: fused qkv_proj and gate_up_proj, LongRoPE on half of every head (partial rotary
    # factor 0.5) with a pretraining length of 8, so the 16-token sequences use the long
    # factors and their first 8 tokens (`short_logits`) the short ones; a sliding window of 6
    # keys on every layer; untied head.
    "phi3": lambda: transformers.Phi3Config(
        **COMMON,
        tie_word_embeddings=False,
        original_max_position_embeddings=8,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "short_factor": [1.0, 1.3, 2.1, 3.7],
            "long_factor": [1.1, 2.9, 7.5, 19.0],
        },
        sliding_window=6,
    ),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# PEFT's names of Phi-3's (fused) linears.
FUSED_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def main(arch):
    out = os.path.join(here, f"tiny-{arch}")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    config = ARCHS[arch]()
    model = AutoModelForCausalLM.from_config(config)
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
    model = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 1024, (2, 16), generator=gen)
    with torch.no_grad():
        base = model(input_ids, labels=input_ids)
        short = model(input_ids[:, :8]).logits

    targets = FUSED_TARGETS if arch == "phi3" else TARGETS
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, init_lora_weights=False
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
    if arch == "phi3":
        tensors["short_logits"] = short.contiguous()
    for name, p in tuned.named_parameters():
        if "lora_" in name:
            # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
            short = name.replace("base_model.model.", "").replace(".default.weight", "")
            tensors[f"grad.{short}"] = p.grad.contiguous()
    tuned.eval()
    merged = tuned.merge_and_unload()
    with torch.no_grad():
        m = merged(input_ids, labels=input_ids)
    tensors["merged_logits"] = m.logits.contiguous()
    tensors["merged_loss"] = m.loss.reshape(1)
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    versions = "torch %s, transformers %s, peft %s, bitsandbytes %s" % (
        torch.__version__,
        transformers.__version__,
        peft.__version__,
        bitsandbytes.__version__,
    )
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(
            f"Made by `../make_tiny_model.py {arch}` with {versions}; what the files hold is "
            "in the script's docstring.\n"
        )

    # bitsandbytes' NF4 checkpoint of the same model.
    nf4_out = os.path.join(here, f"tiny-{arch}-bnb-nf4")
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    quantized = AutoModelForCausalLM.from_pretrained(
        out, quantization_config=bnb, dtype=torch.float32, attn_implementation="eager"
    )
    quantized.eval()
    quantized.save_pretrained(nf4_out)
    # bitsandbytes' CPU kernel depends on the CPU: with AVX512-BF16 it repacks the weights and
    # multiplies in bf16, without it dequantizes to float32 and multiplies (what our default
    # NF4 path does). The float32 path on every CPU, so the fixture does not depend on it.
    for module in quantized.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    with torch.no_grad():
        q = quantized(input_ids, labels=input_ids)
    save_file(
        {"logits": q.logits.contiguous(), "loss": q.loss.reshape(1)},
        os.path.join(nf4_out, "reference.safetensors"),
    )
    with open(os.path.join(nf4_out, "README.md"), "w") as f:
        f.write(
            f"Made by `../make_tiny_model.py {arch}` with {versions}: `../tiny-{arch}` loaded "
            "with bitsandbytes NF4 double quantization (float32 compute) and saved; "
            "`reference.safetensors` holds its `logits` and `loss` on the same `input_ids`, "
            "computed by bitsandbytes' float32 CPU path (its AVX512-BF16 kernel turned off).\n"
        )
    print("wrote", out, nf4_out)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ARCHS:
        sys.exit(f"usage: make_tiny_model.py {{{','.join(ARCHS)}}}")
    main(sys.argv[1])
