"""Real calibration and validation data for scripts/bench_quantize.py, written as .npz folders.

- MiniLM: standard-library docstring sentences, tokenized to 64 tokens, 32 per file;
- EfficientNet-Lite0: seeded random crops (scale, position, flip) of the photographs
  scikit-learn ships, 16 per file; calibration and validation use different seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.readers import docstring_sentences


def minilm_data(calib: int, val: int, folder: Path) -> list[dict]:
    from transformers import AutoTokenizer

    from converter.demos.models import minilm_folder

    tok = AutoTokenizer.from_pretrained(str(minilm_folder()))
    sentences = docstring_sentences(calib + val)
    for name, part in (("calib", sentences[:calib]), ("val", sentences[calib:])):
        (folder / name).mkdir()
        for i in range(0, len(part), 32):
            enc = tok(part[i : i + 32], padding="max_length", truncation=True, max_length=64, return_tensors="np")
            np.savez(folder / name / f"{i:05d}.npz", **{k: enc[k].astype(np.int64) for k in enc})


def photo_crops(count: int, seed: int) -> np.ndarray:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w, _ = photo.shape
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = photo[top : top + side, left : left + side]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        img = Image.fromarray(np.ascontiguousarray(crop)).resize((224, 224), Image.BILINEAR)
        crops.append((np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5)
    return np.stack(crops)


def effnet_data(calib: int, val: int, folder: Path) -> None:
    for name, count, seed in (("calib", calib, 1), ("val", val, 2)):
        (folder / name).mkdir()
        images = photo_crops(count, seed)
        for i in range(0, count, 16):
            np.savez(folder / name / f"{i:05d}.npz", image=images[i : i + 16])
