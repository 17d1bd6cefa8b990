"""Anchor: LoRA supervised fine-tuning throughput of SmolLM2-135M-Instruct with PyTorch + PEFT, CPU.

The workload of `frugal sft` with its defaults: the model from the same GGUF file (transformers
dequantises it to float32), LoRA rank 8, alpha 16, dropout 0.05 on q/k/v/o/gate/up/down, AdamW
(lr 1e-3, no weight decay), batches of 4 pairs padded to the longest, the chat template applied
to the prompt, loss on the answer tokens (and the end-of-turn token) only.
Data: the first (2 + STEPS) * 4 pairs of a JSONL of {"prompt", "answer"}
(`frugal data prepare email-subjects --out DIR` writes DIR/train.jsonl), cut at 256 tokens.
2 warm-up steps, then STEPS timed steps (forward + backward + optimizer step + zero_grad).
Prints one JSON line: tokens per second (prompt and answer tokens, no padding), steps, threads.

Setup: the anchors' venv (../shared/anchors/setup.sh) plus `pip install peft==0.21.2 gguf==0.19.0`.
Run:   ANCHOR_SMOLLM_GGUF=... python anchors/sft_peft.py PAIRS.jsonl [STEPS]
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import sys
import time

import peft
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

BATCH = 4
WARMUP = 2
MAX_LEN = 256
SEED = 0


def main():
    pairs_path = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    gguf = os.environ["ANCHOR_SMOLLM_GGUF"]
    threads = int(os.environ.get("ANCHOR_THREADS", "2"))
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    cfg = peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = peft.get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.train()

    n = BATCH * (WARMUP + steps)
    with open(pairs_path, encoding="utf-8") as fh:
        pairs = [json.loads(l) for l in fh if l.strip()][:n]
    examples = []
    for p in pairs:
        msgs = [{"role": "user", "content": p["prompt"]}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(
            msgs + [{"role": "assistant", "content": p["answer"]}], tokenize=False)
        ids_p = tok(prompt, add_special_tokens=False)["input_ids"]
        ids_a = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
        if tok.eos_token_id in ids_a:  # through the end-of-turn token, as frugal trains
            ids_a = ids_a[: ids_a.index(tok.eos_token_id) + 1]
        ids = (ids_p + ids_a)[:MAX_LEN]
        labels = ([-100] * len(ids_p) + ids_a)[:MAX_LEN]
        examples.append((ids, labels))

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                            weight_decay=0.0)

    def step(batch):
        t = max(len(i) for i, _ in batch)
        ids = torch.tensor([i + [0] * (t - len(i)) for i, _ in batch])
        lab = torch.tensor([l + [-100] * (t - len(l)) for _, l in batch])
        att = torch.tensor([[1] * len(i) + [0] * (t - len(i)) for i, _ in batch])
        out = model(input_ids=ids, attention_mask=att, labels=lab)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        return sum(len(i) for i, _ in batch), out.loss.item()

    batches = [examples[i:i + BATCH] for i in range(0, n, BATCH)]
    for b in batches[:WARMUP]:
        step(b)
    t0 = time.perf_counter()
    tokens = 0
    losses = []
    for b in batches[WARMUP:]:
        k, loss = step(b)
        tokens += k
        losses.append(loss)
    secs = time.perf_counter() - t0
    print(json.dumps({
        "anchor": "sft_peft", "tokens_per_s": tokens / secs, "examples_per_s": steps * BATCH / secs,
        "steps": steps, "batch": BATCH, "tokens": tokens, "seconds": secs, "threads": threads,
        "trainable_params": trainable, "first_loss": losses[0], "last_loss": losses[-1],
        "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__,
    }))


if __name__ == "__main__":
    main()
