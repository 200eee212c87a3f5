"""danlu's LoRA SFT against TRL's SFTTrainer: the same SmolLM2-135M, LoRA configuration, alpaca-en
examples, max length, batch and steps, interleaved in one run; trained tokens/s and validation loss.

Both train one epoch over exactly steps x batch training examples (so both see the same tokens) with
the loss on the assistant answer only (TRL: prompt-completion data with `completion_only_loss`, since
SmolLM2's chat template has no `{% generation %}` markers for `assistant_only_loss`). The validation
loss of both trained models is measured by the same function (danlu.tasks.sft.token_loss). Both timings
are of the whole training call, with one checkpoint written at the last step (danlu's loop always writes
one; the Trainer is told to).
TRL runs in its own virtual environment (default /work/bench-venv-trl; `--trl-python`).

    flock /tmp/danlu-cpu.lock .venv/bin/python benchmarks/sft_vs_trl.py --steps 20 --batch 8 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from finetune_vs_hf import cpu_model  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (worker, SFTConfig fields that differ from TRL's defaults)
SYSTEMS = {"danlu": ("danlu", {}), "trl": ("trl", {}), "trl-no-ckpt": ("trl", {"gradient_checkpointing": False}),
           "trl-grouped": ("trl", {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"})}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def examples(n_train: int, n_val: int):
    from danlu.data.chat import load_chat

    data = load_chat("alpaca-en")
    return data.splits["train"][:n_train], data.splits["validation"][:n_val]


def validation_loss(model, tokenizer, val, max_length: int) -> float:
    from danlu.tasks.sft import token_loss

    model.eval()
    return token_loss(model, tokenizer, val, max_length)["loss"]


def run_danlu(cfg: dict) -> dict:
    """danlu's loop with the sft objective (what `danlu finetune --task sft --lora` runs)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoTokenizer, set_seed

    from danlu.assets import resolve_model
    from danlu.config import TrainArgs
    from danlu.tasks import sft
    from danlu.train.loop import train

    torch.set_num_threads(cfg["threads"])
    path = resolve_model("smollm2-135m")
    train_rows, val = examples(cfg["steps"] * cfg["batch"], cfg["val"])
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    objective, lengths = sft.make_objective(tokenizer, train_rows, [], cfg["max_length"])
    set_seed(0)
    model = get_peft_model(sft.build_model(path, []), LoraConfig(task_type=TaskType.CAUSAL_LM, **LORA))
    args = TrainArgs(max_steps=cfg["steps"], lr=cfg["lr"], batch_size=cfg["batch"], warmup_ratio=0.0,
                     weight_decay=0.0, max_grad_norm=1.0, log_every=1000, save_every=10**6, seed=0)
    run_dir = Path(cfg["work"]) / "danlu.run"
    started = time.perf_counter()
    train(model, objective, lengths, args, run_dir)
    seconds = time.perf_counter() - started  # the whole call, its final checkpoint included, as for TRL
    tokens = sum(lengths)
    return {"train_seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
            "validation_loss": validation_loss(model, tokenizer, val, cfg["max_length"])}


def run_trl(cfg: dict) -> dict:
    """TRL's SFTTrainer on the same rows (this function runs inside the TRL virtual environment)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from danlu.assets import resolve_model

    torch.set_num_threads(cfg["threads"])
    path = str(resolve_model("smollm2-135m"))
    train_rows, val = examples(cfg["steps"] * cfg["batch"], cfg["val"])
    rows = [{"prompt": m[:-1], "completion": m[-1:]} for m in train_rows]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = SFTConfig(output_dir=str(Path(cfg["work"]) / "trl.run"), max_steps=cfg["steps"],
                       per_device_train_batch_size=cfg["batch"], learning_rate=cfg["lr"], lr_scheduler_type="linear",
                       warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_length=cfg["max_length"],
                       completion_only_loss=True, packing=False, report_to=[], save_strategy="steps", save_steps=cfg["steps"],
                       logging_steps=1000,
                       seed=0, use_cpu=True, dataloader_num_workers=0, bf16=False, **cfg.get("trl_overrides", {}))
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))
    tokens = sum(min(len(ids), cfg["max_length"]) for ids in trainer.train_dataset["input_ids"])
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"train_seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
            "validation_loss": validation_loss(trainer.model, tokenizer, val, cfg["max_length"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--val", type=int, default=50, help="validation examples scored after training")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trl-python", default="/work/bench-venv-trl/bin/python")
    p.add_argument("--work", default="/tmp/danlu-sft-vs-trl")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sft_vs_trl.json"))
    p.add_argument("--systems", nargs="+", default=["danlu", "trl"], choices=list(SYSTEMS),
                   help="trl: SFTConfig's defaults (gradient checkpointing on, random order); trl-no-ckpt: without "
                        "gradient checkpointing; trl-grouped: without it and with group_by_length batches")
    p.add_argument("--_worker", choices=["danlu", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--_config", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._worker:
        cfg = json.loads(a._config)
        print("RESULT " + json.dumps((run_danlu if a._worker == "danlu" else run_trl)(cfg)))
        return
    cfg = {"steps": a.steps, "batch": a.batch, "max_length": a.max_length, "lr": a.lr, "val": a.val,
           "threads": a.threads, "work": a.work}
    runs: dict[str, list[dict]] = {name: [] for name in a.systems}
    for r in range(a.rounds):
        for name in a.systems:  # interleaved
            worker, overrides = SYSTEMS[name]
            python = sys.executable if worker == "danlu" else a.trl_python
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(a.threads)}
            proc = subprocess.run([python, __file__, "--_worker", worker, "--_config",
                                   json.dumps({**cfg, "trl_overrides": overrides})],
                                  capture_output=True, text=True, env=env)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(lines[-1][7:]))
            print(f"round {r + 1} {name}: {runs[name][-1]}", flush=True)
    best = {name: max(rs, key=lambda x: x["tokens_per_second"]) for name, rs in runs.items()}
    peers = [n for n in a.systems if n != "danlu"]
    result = {
        "config": {**cfg, "lora": LORA, "model": "smollm2-135m", "data": "alpaca-en (train split head)"},
        "runs": runs,
        "tokens_per_second": {n: b["tokens_per_second"] for n, b in best.items()},
        "validation_loss": {n: b["validation_loss"] for n, b in best.items()},
        "throughput_ratio_danlu_over": {n: best["danlu"]["tokens_per_second"] / best[n]["tokens_per_second"]
                                        for n in peers},
        "cpu": cpu_model(), "loadavg": os.getloadavg(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    for n in peers:
        print(f"danlu {best['danlu']['tokens_per_second']:.0f} tok/s vs {n} {best[n]['tokens_per_second']:.0f} tok/s: "
              f"{result['throughput_ratio_danlu_over'][n]:.2f}x; validation loss "
              f"{best['danlu']['validation_loss']:.4f} vs {best[n]['validation_loss']:.4f}")


if __name__ == "__main__":
    main()
