"""Every example command in the README and in each `--help` runs and exits 0.

The examples are read from the documentation itself (README ```bash blocks, the
"Examples:" block of every command's help), so a new example is tested the day it is
written. They run in the order a reader meets them, in one workspace, like a user
following the docs: `trtforge convert` writes trtforge_out/ before the verify examples
read it. The files an example names without making (`model.onnx`, `lm.onnx`, `calib/`,
`sentences.txt`, `mypkg.models:make_net`, ...) are made here, with the meaning the README
gives them (README, "Commands"). Where an example would search over the full demo data,
it runs on fewer samples (SMALLER_INPUTS): same command and flags, smaller data.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from converter.cli.main import main

REPO = Path(__file__).resolve().parents[2]

# Extra flags that only shrink the data an example runs on (never what it does).
SMALLER_INPUTS = {
    "drop-blocks": ["--calibration-samples", "16", "--validation-samples", "16", "--batch-size", "8"],
    "quantize": ["--search-samples", "16", "--batch-size", "8"],
}

MAKE_NET = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, image):
        return self.head(torch.relu(self.conv(image)).mean((2, 3)))


def make_net():
    torch.manual_seed(0)
    return Net()
"""


def _help_examples(command: click.Command) -> list[str]:
    text = (command.help or "").split("Examples:", 1)
    return (
        [line.strip() for line in text[1].splitlines() if line.strip().startswith("trtforge ")] if len(text) > 1 else []
    )


def documented_examples() -> list[str]:
    """main's examples first (the narrative), then each command's, then the README's; each once."""
    ctx = click.Context(main)
    found = _help_examples(main)
    for name in main.list_commands(ctx):
        found += _help_examples(main.get_command(ctx, name))
    readme = (REPO / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        found += [line.strip() for line in block.splitlines() if line.strip().startswith("trtforge ")]
    unique: dict[str, None] = {}
    for line in found:
        unique.setdefault(line.split("  #")[0].split(" # ")[0].strip(), None)
    return list(unique)


EXAMPLES = documented_examples()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The files the examples name without making them, as the README describes them."""
    from transformers import AutoTokenizer

    from converter import api
    from converter.demos.models import efficientnet_feeds, minilm_folder
    from converter.demos.sample_data import stdlib_sentences
    from converter.demos.splits import lm_windows

    ws = tmp_path_factory.mktemp("examples")
    api.export("efficientnet-lite0", ws / "model.onnx")
    shutil.copy(ws / "model.onnx", ws / "ref.onnx")
    api.optimize(ws / "model.onnx", ws / "cand.onnx", passes=["fold"])
    api.build(ws / "model.onnx", ws / "model.engine", target_gpus=["sm86"])
    api.export("minilm", ws / "minilm.onnx")
    api.export("decoder-lm", ws / "lm.onnx")
    for folder in ("calib", "calib_npz"):
        (ws / folder).mkdir()
        for index, feeds in enumerate(efficientnet_feeds(4, 2)):
            np.savez(ws / folder / f"batch{index}.npz", **feeds)
    (ws / "sentences.txt").write_text("\n".join(stdlib_sentences(32)) + "\n")
    AutoTokenizer.from_pretrained(str(minilm_folder())).save_pretrained(str(ws / "tok"))
    np.savez(ws / "calib.npz", input_ids=lm_windows("held-out-a", 16, 64, seed=0))
    np.savez(ws / "val.npz", input_ids=lm_windows("held-out-b", 16, 64, seed=1))
    (ws / "mypkg").mkdir()
    (ws / "mypkg" / "__init__.py").write_text("")
    (ws / "mypkg" / "models.py").write_text(MAKE_NET)
    return ws


def test_examples_were_found():
    commands = {shlex.split(line)[1] for line in EXAMPLES}
    assert {
        "convert",
        "export",
        "optimize",
        "build",
        "verify",
        "inspect",
        "passes",
        "quantize",
        "drop-blocks",
    } <= commands


@pytest.mark.slow
@pytest.mark.xdist_group("examples")  # one worker, in order: later examples read what earlier ones wrote
@pytest.mark.parametrize("example", EXAMPLES)
def test_documented_example_runs(example, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.syspath_prepend(str(workspace))  # mypkg.models:make_net imports from the working folder
    args = shlex.split(example)[1:]
    args += SMALLER_INPUTS.get(args[0], [])
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, f"{example}\n{result.output[-3000:]}"
    assert "Traceback" not in result.output
