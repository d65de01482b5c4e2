"""Retrain the decoder-lm demo (converter/demos/decoder_lm.py) on stdlib docstrings.

Only on request: the trained weights ship with the package, so nothing in trtforge or
its tests trains. This script reproduces how they were made and prints the sha256 to
put in WEIGHTS_SHA256 when a new version is shipped.

    python scripts/train_decoder_lm.py --out /tmp/decoder_lm.safetensors   # ~2 min on 2 idle cores
    python scripts/train_decoder_lm.py --check                             # the shipped weights' perplexity
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from converter.demos.decoder_lm import CONFIG, DecoderLM, corpus, held_out_windows, load, perplexity, windows  # noqa: E402

TRAIN = {"steps": 900, "batch": 24, "seq": 96, "lr": 3e-3, "seed": 0}


def train(log=print) -> DecoderLM:
    """AdamW + one-cycle schedule on seeded random windows of the training text."""
    torch.manual_seed(TRAIN["seed"])
    text, held = corpus()
    model = DecoderLM(**CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, TRAIN["lr"], total_steps=TRAIN["steps"], pct_start=0.1)
    start = time.time()
    for step in range(TRAIN["steps"]):
        batch = torch.from_numpy(windows(text, TRAIN["batch"], TRAIN["seq"], seed=step))
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, CONFIG["vocab"]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == TRAIN["steps"] - 1:
            log(f"step {step:4d}/{TRAIN['steps']}  loss {loss.item():.3f}  {time.time() - start:.0f} s")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description="Retrain the trtforge decoder-lm demo, or check the shipped weights.")
    parser.add_argument("--out", type=Path, help="write the trained weights here (safetensors)")
    parser.add_argument("--check", action="store_true", help="print the shipped weights' held-out perplexity")
    args = parser.parse_args()
    if not args.out and not args.check:
        parser.error("give --out FILE to train, or --check")
    if args.out:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        model = train()
        from safetensors.torch import save_file

        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, args.out)
        print(f"wrote {args.out}  sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()}")
    else:
        model = load()
    print(f"held-out perplexity {perplexity(model, held_out_windows(64, TRAIN['seq'])):.3f} (bytes)")


if __name__ == "__main__":
    main()
