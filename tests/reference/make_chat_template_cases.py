"""Reference renderings of the chat templates the supported models ship, made by transformers.

    python make_chat_template_cases.py TEMPLATE_DIR MODELS_DIR > chat_template_cases.json

TEMPLATE_DIR holds the `.jinja` files of llama.cpp's `models/templates/` (from the
llama-cpp-python==0.3.36 sdist; `examples/fetch_models.sh templates` caches them and links
them as tests/models/chat-templates). MODELS_DIR is tests/models, whose real GGUFs carry their
own templates in `tokenizer.chat_template` (the Gemma 3 270M GGUF is the base model and has
none; Gemma 2's template stands for Gemma's, which has no system role). Each case is rendered by
`transformers.utils.chat_template_utils.render_jinja_template`, the function behind
`apply_chat_template(..., tokenize=False)`, with the model's special tokens as variables.
Made with transformers 5.25.0, jinja2 3.1.6, gguf 0.19.0.
"""

import json
import sys
from pathlib import Path

import gguf
import transformers
from transformers.utils.chat_template_utils import render_jinja_template

template_dir, models_dir = Path(sys.argv[1]), Path(sys.argv[2])

# name -> (where the template is, special tokens)
SOURCES = {
    "Qwen-Qwen3-0.6B.jinja": {"bos_token": None, "eos_token": "<|im_end|>"},
    "Qwen-Qwen2.5-7B-Instruct.jinja": {"bos_token": None, "eos_token": "<|im_end|>"},
    "microsoft-Phi-3.5-mini-instruct.jinja": {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
    "google-gemma-2-2b-it.jinja": {"bos_token": "<bos>", "eos_token": "<eos>"},
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": {"bos_token": "<s>", "eos_token": "</s>"},
    "meta-llama-Llama-3.2-3B-Instruct.jinja": {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
    },
    "gguf:Qwen2.5-Coder-0.5B-Instruct.gguf": {"bos_token": None, "eos_token": "<|im_end|>"},
}


def template_of(name):
    if name.startswith("gguf:"):
        reader = gguf.GGUFReader(models_dir / name[len("gguf:") :])
        field = reader.fields["tokenizer.chat_template"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return (template_dir / name).read_text(encoding="utf-8")


def m(role, content):
    return {"role": role, "content": content}


SYSTEM = m("system", "You are a careful assistant.\nAnswer briefly.")
CHATS = {
    "one_user": [m("user", "Hello!")],
    "system_multi_turn": [
        SYSTEM,
        m("user", "What is 2+2?"),
        m("assistant", "4"),
        m("user", "  And 3+3?  \n"),
    ],
    "no_system_training": [
        m("user", "Name a colour, <b>&</b> \"quote\" ünïcödé."),
        m("assistant", "Blue.\n\nOr green."),
        m("user", "Another?"),
        m("assistant", "Red."),
    ],
}
THINKING = {
    # Qwen3: an earlier turn's reasoning is dropped, the last turn's is kept
    "thinking_turns": [
        m("user", "Think: 1+1?"),
        m("assistant", "<think>\nOne and one.\n</think>\n\n2"),
        m("user", "And 2+2?"),
        m("assistant", "<think>\nTwo and two.\n</think>\n\n4"),
    ],
}


def case(source, chat_name, messages, add_generation_prompt, kwargs):
    tokens = SOURCES[source]
    try:
        text = render_jinja_template(
            conversations=[messages],
            chat_template=template_of(source),
            add_generation_prompt=add_generation_prompt,
            **{k: v for k, v in tokens.items() if v is not None},
            **kwargs,
        )[0][0]
        out = {"expected": text}
    except Exception as e:  # the template's own raise_exception
        out = {"error": str(e)}
    return {
        "template": source,
        "chat": chat_name,
        "messages": messages,
        "add_generation_prompt": add_generation_prompt,
        "kwargs": kwargs,
        **{k: v for k, v in tokens.items()},
        **out,
    }


cases = []
for source in SOURCES:
    kwargs = {}
    if "Llama-3" in source:
        kwargs = {"date_string": "04 Dec 2026"}
    for chat_name, messages in CHATS.items():
        for gen in (False, True):
            cases.append(case(source, chat_name, messages, gen, kwargs))
    if "Qwen3" in source:
        for chat_name, messages in THINKING.items():
            cases.append(case(source, chat_name, messages, False, {}))
        cases.append(case(source, "one_user", CHATS["one_user"], True, {"enable_thinking": False}))
        cases.append(case(source, "one_user", CHATS["one_user"], True, {"enable_thinking": True}))

print(
    json.dumps(
        {"transformers": transformers.__version__, "cases": cases},
        indent=1,
        ensure_ascii=False,
    )
)
