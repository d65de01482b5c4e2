"""Every command refuses every hostile or broken ONNX of the corpus: exit 4, one line naming
the fault, no traceback, nothing written, and no byte of a file outside the model's folder read."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from converter.cli.main import main
from converter.core.errors import ExitCode
from tests.bad_inputs.corpus import CASES

COMMANDS = {
    "inspect": lambda model, out: ["inspect", model],
    "optimize": lambda model, out: ["optimize", model, "-o", out / "o.onnx"],
    "build": lambda model, out: ["build", model, "-o", out / "m.engine", "--target-gpu", "sm86"],
    "verify": lambda model, out: ["verify", model, model],
    "convert": lambda model, out: ["convert", model, "-o", out / "conv"],
    "quantize": lambda model, out: ["quantize", model, "-o", out / "q.onnx"],
    "drop-blocks": lambda model, out: ["drop-blocks", model, "-o", out / "d.onnx", "--remove", "1"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_is_refused_with_one_line(case, command, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    model, expected = CASES[case](folder)
    out = tmp_path / "out"
    out.mkdir()
    before = sorted(p.name for p in folder.iterdir())
    args = [str(a) for a in COMMANDS[command](model, out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    lines = result.output.strip().splitlines()
    assert result.exit_code == ExitCode.INVALID_INPUT, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert expected in lines[0] and "Traceback" not in result.output
    assert list(out.iterdir()) == [], "nothing written"
    assert sorted(p.name for p in folder.iterdir()) == before, "nothing deleted or added beside the model"
