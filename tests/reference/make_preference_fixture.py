#!/usr/bin/env python3
"""Make tests/reference/preference/: what TRL computes for preference pairs on the tiny LLaMA
fixture with its PEFT adapter (tests/fixtures/tiny-llama, tiny-llama-lora), in float32.

    ~/.cache/qlora-peer/bin/python tests/reference/make_preference_fixture.py

Run with the peer stack of ../shared/bench/README.md plus trl (torch, transformers, peft, trl).
For a standard shape (prompt/chosen/rejected strings) and a conversational one (message lists,
the tiny model's chat template), it writes:
- `pairs_SHAPE.jsonl`: the pairs;
- `tokenized.json`: TRL's `DPOTrainer` tokenization of each pair (`prompt_ids`, `chosen_ids`,
  `rejected_ids`);
- `reference.safetensors`: per shape, `SHAPE.policy_logps` and `SHAPE.reference_logps` [pairs,
  2] (chosen, rejected: summed completion log-probabilities). Given a PEFT model with an
  adapter, TRL's DPO reference is that adapter as loaded (its copy `ref`); the policy here is
  the same adapter with every `lora_B` scaled by 1.5 after the trainer made its copy, so the two
  differ. For each
  objective `SHAPE.OBJ.loss` [1] and `SHAPE.OBJ.grad.MODULE.lora_A|lora_B`, the gradients of that
  loss with respect to the adapter's weights, where OBJ is
  - `dpo_sigmoid`, `dpo_ipo`: `DPOTrainer.compute_loss` (beta 0.1, loss_type sigmoid / ipo),
  - `orpo`: TRL's ORPO loss (`ORPOTrainer.odds_ratio_loss`, beta 0.1) on mean token
    log-probabilities, minus from the chosen completions' mean token NLL,
  - `simpo`: TRL's CPO loss with loss_type simpo (`CPOTrainer.cpo_loss`, beta 2.0, gamma 0.5,
    cpo_alpha 0) on mean token log-probabilities;
  all over the three pairs of a shape as one batch, on DPO's tokenization;
- `versions.json`: the libraries' versions and these settings.
"""
import json
import os
import tempfile
import types

import peft
import torch
import transformers
import trl
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer
from trl.trainer.utils import use_adapter

here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "fixtures")
out = os.path.join(here, "preference")

STANDARD = [
    {"prompt": "Answer in capital letters. What is the opposite of hot?", "chosen": " COLD", "rejected": " cold"},
    {"prompt": "Is 4821 even or odd?", "chosen": " odd", "rejected": " even, I think"},
    {"prompt": "Name a fruit that is yellow.", "chosen": " A banana.", "rejected": " Blue."},
]


def chat(prompt, chosen, rejected):
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


CONVERSATIONAL = [
    chat("Answer in capital letters. What is the opposite of up?", "DOWN", "down"),
    chat("Who are you?", "I'm Quokka, a small assistant.", "No."),
    chat("What is 2 + 2?", "4", "5, probably"),
]

BETA = 0.1
ORPO_BETA = 0.1
SIMPO_BETA, SIMPO_GAMMA = 2.0, 0.5


def lora_grads(model, prefix, tensors):
    for name, p in model.named_parameters():
        if "lora_" in name and ".default." in name:
            short = name.replace("base_model.model.", "").replace(".default.weight", "")
            tensors[f"{prefix}.grad.{short}"] = p.grad.detach().clone().contiguous()


def sequence_logps(model, batch, average):
    """Summed (or mean) completion log-probabilities of the batch's rows, chosen then rejected."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = batch["input_ids"][:, 1:]
    per_token = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].float()
    summed = (per_token * mask).sum(dim=1)
    counts = mask.sum(dim=1)
    return (summed / counts if average else summed), per_token, mask


def fresh_model():
    base = AutoModelForCausalLM.from_pretrained(os.path.join(fixtures, "tiny-llama"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, os.path.join(fixtures, "tiny-llama-lora"), is_trainable=True)
    model.eval()  # no dropout: the same numbers, with gradients
    return model


def main():
    os.makedirs(out, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(os.path.join(fixtures, "tiny-llama"))
    tensors, tokenized = {}, {}
    shim = types.SimpleNamespace(accelerator=types.SimpleNamespace(device="cpu"))
    for shape, pairs in [("standard", STANDARD), ("chat", CONVERSATIONAL)]:
        with open(os.path.join(out, f"pairs_{shape}.jsonl"), "w") as f:
            for p in pairs:
                f.write(json.dumps(p) + "\n")
        with tempfile.TemporaryDirectory() as tmp:
            args = DPOConfig(
                output_dir=tmp,
                per_device_train_batch_size=len(pairs),
                beta=BETA,
                loss_type=["sigmoid"],
                max_length=None,
                report_to="none",
                use_cpu=True,
                bf16=False,
                gradient_checkpointing=False,
            )
            trainer = DPOTrainer(
                model=fresh_model(), args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok
            )
            # The trainer may wrap the model: score and differentiate the one it trains. Its
            # reference is the adapter as loaded (`ref`); move the policy away from it.
            model = trainer.model
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B.default" in name:
                        p.mul_(1.5)
            rows = [trainer.train_dataset[i] for i in range(len(pairs))]
            tokenized[shape] = [
                {k: list(r[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in rows
            ]
            batch = trainer.data_collator(rows)
            n = len(pairs)
            with torch.no_grad():
                policy, _, _ = sequence_logps(model, batch, average=False)
                with use_adapter(model, "ref"):
                    reference, _, _ = sequence_logps(model, batch, average=False)
            tensors[f"{shape}.policy_logps"] = torch.stack([policy[:n], policy[n:]], dim=1).contiguous()
            tensors[f"{shape}.reference_logps"] = torch.stack([reference[:n], reference[n:]], dim=1).contiguous()
            for loss_type in ["sigmoid", "ipo"]:
                trainer.loss_types = [loss_type]
                model.zero_grad()
                loss = trainer.compute_loss(model, batch)
                loss.backward()
                tensors[f"{shape}.dpo_{loss_type}.loss"] = loss.detach().reshape(1)
                lora_grads(model, f"{shape}.dpo_{loss_type}", tensors)

            # ORPO: NLL of the chosen completions (mean over their tokens) minus the mean of
            # beta * log sigmoid(log odds), on mean token log-probabilities.
            model.zero_grad()
            means, per_token, mask = sequence_logps(model, batch, average=True)
            orpo = types.SimpleNamespace(beta=ORPO_BETA, **vars(shim))
            losses, *_ = ORPOTrainer.odds_ratio_loss(orpo, means[:n], means[n:])
            nll = -(per_token[:n] * mask[:n]).sum() / mask[:n].sum()
            loss = nll - losses.mean()
            loss.backward()
            tensors[f"{shape}.orpo.loss"] = loss.detach().reshape(1)
            lora_grads(model, f"{shape}.orpo", tensors)

            model.zero_grad()
            means, _, _ = sequence_logps(model, batch, average=True)
            cpo = types.SimpleNamespace(
                beta=SIMPO_BETA, simpo_gamma=SIMPO_GAMMA, loss_type="simpo", label_smoothing=0.0, alpha=0.0, **vars(shim)
            )
            losses, *_ = CPOTrainer.cpo_loss(cpo, means[:n], means[n:])
            loss = losses.mean()
            loss.backward()
            tensors[f"{shape}.simpo.loss"] = loss.detach().reshape(1)
            lora_grads(model, f"{shape}.simpo", tensors)
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "tokenized.json"), "w") as f:
        json.dump(tokenized, f)
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump(
            {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "trl": trl.__version__,
                "dpo_beta": BETA,
                "orpo_beta": ORPO_BETA,
                "simpo_beta": SIMPO_BETA,
                "simpo_gamma": SIMPO_GAMMA,
            },
            f,
            indent=1,
        )
    print("wrote", out)


if __name__ == "__main__":
    main()
