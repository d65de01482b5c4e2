"""Train (or load from cache) the small decoder LM; see converter/demos/decoder_lm.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converter.demos.decoder_lm import TRAIN, cache_path, held_out_windows, load_or_train, perplexity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the trtforge decoder LM demo on stdlib docstrings.")
    parser.add_argument("--force", action="store_true", help="retrain even if a cached model exists")
    args = parser.parse_args()
    model = load_or_train(args.force)
    print(f"cached at {cache_path()}")
    print(f"held-out perplexity {perplexity(model, held_out_windows(64, TRAIN['seq'])):.3f}")


if __name__ == "__main__":
    main()
