"""Bad and hostile command lines, each with the files it needs generated (no hand-copied bytes).

The companion of corpus.py (broken ONNX files, tried with every command): these are the
user's other inputs and options, grouped by the class of defect they once showed: a denial
of service, something accepted that must be refused, an internal error (exit 1) for the
user's mistake, markup from data. Each case writes its files into a folder and returns the
argument list, the exit code and the words the one-line error must contain.

    python -m tests.bad_inputs.command_cases OUT_DIR     # writes every case, prints each command
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.core.errors import ExitCode
from tests.bad_inputs.case_files import (
    calib_folder,
    conv_model,
    embedding_model,
    engine_with_sidecar,
    matmul_model,
    npz_file,
    python_module,
    sidecar_json,
    write_file,
)

INVALID, USAGE = ExitCode.INVALID_INPUT, ExitCode.USAGE


@dataclass(frozen=True)
class CommandCase:
    kind: str  # the class of defect: "dos", "refuse", "internal", "markup"
    make: Callable[[Path], list[str]]  # writes its files into the folder, returns the arguments
    exit_code: int
    message: str  # the one-line error contains this


def _recipe(folder: Path, text: str | bytes) -> list[str]:
    return ["convert", matmul_model(folder), "--recipe", write_file(folder, "r.yaml", text), "-o", str(folder / "out")]


def _quantize(folder: Path, calib: np.ndarray, *extra: str) -> list[str]:
    """quantize of the MatMul model with a calibration folder holding `calib` as input x."""
    return [
        "quantize",
        matmul_model(folder),
        "--calib",
        calib_folder(folder, x=calib),
        *extra,
        "-o",
        str(folder / "q.onnx"),
    ]


def _build(folder: Path, *extra: str) -> list[str]:
    return ["build", matmul_model(folder), "-o", str(folder / "m.engine"), *extra]


def _optimize(folder: Path, *extra: str) -> list[str]:
    return ["optimize", matmul_model(folder), "-o", str(folder / "o.onnx"), *extra]


def _big_png(folder: Path) -> list[str]:
    from PIL import Image

    (folder / "images").mkdir()
    Image.new("RGB", (9000, 9000)).save(folder / "images" / "big.png")  # 81 Mpx, over the 64 Mpx limit
    return ["quantize", conv_model(folder), "--calib", str(folder / "images"), "-o", str(folder / "q.onnx")]


CASES: dict[str, CommandCase] = {
    # -- denial of service: each once ran until killed or exhausted memory
    "recipe_verify_batches_1e11": CommandCase(
        "dos", lambda f: _recipe(f, "verify_batches: 100000000000\n"), INVALID, "verify_batches"
    ),
    "recipe_verify_batch_size_huge": CommandCase(
        "dos", lambda f: _recipe(f, "verify_batch_size: 10000000\n"), INVALID, "verify_batch_size"
    ),
    "recipe_profile_dim_2_40": CommandCase(
        "dos",
        lambda f: _recipe(f, "shapes: {x: {min: [1, 4], opt: [2, 4], max: [1099511627776, 4]}}\n"),
        INVALID,
        "dims must be integers",
    ),
    "calibration_image_81_megapixels": CommandCase("dos", _big_png, INVALID, "big.png"),
    "shapes_dim_2_40": CommandCase(
        "dos",
        lambda f: _build(f, "--shapes", "x:1x4/2x4/1099511627776x4"),
        INVALID,
        "at most 2147483647",
    ),
    "limit_option_unknown": CommandCase(
        "refuse", lambda f: ["--limit", "memory=1G", "inspect", matmul_model(f)], USAGE, "--limit 'memory=1G'"
    ),
    # -- accepted when it must be refused
    "passes_quantize_without_data": CommandCase(
        "refuse", lambda f: _optimize(f, "--passes", "quantize"), INVALID, "needs calibration data"
    ),
    "passes_smoothquant_without_data": CommandCase(
        "refuse", lambda f: _optimize(f, "--passes", "smoothquant"), INVALID, "needs calibration data"
    ),
    "recipe_quantize_without_data": CommandCase(
        "refuse", lambda f: _recipe(f, "passes: [fold, quantize]\n"), INVALID, "needs calibration data"
    ),
    "factory_calls_sys_exit_0": CommandCase(
        "refuse",
        lambda f: [
            "export",
            python_module(f, "exits", "import sys\ndef make():\n    sys.exit(0)\n") + ":make",
            "--shapes",
            "x:1x4",
            "-o",
            str(f / "e.onnx"),
        ],
        INVALID,
        "called sys.exit(0)",
    ),
    "module_exits_at_import": CommandCase(
        "refuse",
        lambda f: [
            "export",
            python_module(f, "exits_early", "raise SystemExit(3)\n") + ":make",
            "-o",
            str(f / "e.onnx"),
        ],
        INVALID,
        "sys.exit(3)",
    ),
    "module_with_syntax_error": CommandCase(
        "internal",
        lambda f: ["export", python_module(f, "broken_syntax", "def make(:\n") + ":make", "-o", str(f / "e.onnx")],
        INVALID,
        "SyntaxError",
    ),
    "shapes_name_unknown_input": CommandCase(
        "refuse",
        lambda f: _build(f, "--shapes", "nope:1x4/2x4/4x4"),
        INVALID,
        "'nope'",
    ),
    "convert_shapes_unknown_input": CommandCase(
        "refuse",
        lambda f: ["convert", matmul_model(f), "-o", str(f / "out"), "--shapes", "nope:1x4/2x4/4x4"],
        INVALID,
        "'nope'",
    ),
    "verify_shapes_unknown_input": CommandCase(
        "refuse", lambda f: ["verify", matmul_model(f), matmul_model(f), "--shapes", "nope:1x4"], INVALID, "'nope'"
    ),
    "quantize_shapes_unknown_input": CommandCase(
        "refuse",
        lambda f: _quantize(f, np.ones((4, 4), np.float32), "--shapes", "nope:1x4"),
        INVALID,
        "'nope'",
    ),
    "shapes_min_above_opt": CommandCase(
        "refuse",
        lambda f: _build(f, "--shapes", "x:4x4/2x4/8x4"),
        INVALID,
        "min <= opt <= max",
    ),
    "tolerance_for_unknown_output": CommandCase(
        "refuse", lambda f: ["verify", matmul_model(f), matmul_model(f), "--atol", "nope:0.1"], USAGE, "nope"
    ),
    "recipe_tolerance_nan": CommandCase(
        "refuse", lambda f: _recipe(f, "tolerances: {atol: .nan}\n"), INVALID, "tolerances.atol"
    ),
    "recipe_unknown_pass_option": CommandCase(
        "refuse", lambda f: _recipe(f, "passes: [{name: cleanup, options: {colour: red}}]\n"), INVALID, "colour"
    ),
    "pass_name_typo": CommandCase(
        "refuse", lambda f: _optimize(f, "--passes", "fold-constant"), INVALID, "fold-constants"
    ),
    "output_is_the_input": CommandCase(
        "refuse", lambda f: ["optimize", matmul_model(f), "-o", str(f / "m.onnx")], INVALID, "which this command reads"
    ),
    "build_target_sm90_for_rtx": CommandCase(
        "refuse",
        lambda f: _build(f, "--backend", "tensorrt-rtx", "--target-gpu", "sm90"),
        ExitCode.UNSUPPORTED,
        "sm90",
    ),
    # -- once an internal error (exit 1) for the user's mistake
    "output_name_over_255_bytes": CommandCase(
        "internal", lambda f: ["optimize", matmul_model(f), "-o", str(f / ("a" * 300 + ".onnx"))], INVALID, "305 bytes"
    ),
    "convert_out_name_over_255_bytes": CommandCase(
        "internal", lambda f: ["convert", matmul_model(f), "-o", str(f / ("d" * 300))], INVALID, "bytes"
    ),
    "output_under_proc": CommandCase(
        "internal", lambda f: ["optimize", matmul_model(f), "-o", "/proc/self/trtforge/o.onnx"], INVALID, "/proc/self"
    ),
    "output_below_a_file": CommandCase(
        "internal", lambda f: ["optimize", matmul_model(f), "-o", str(f / "m.onnx" / "o.onnx")], INVALID, "cannot write"
    ),
    "sidecar_without_backend": CommandCase(
        "internal", lambda f: ["inspect", engine_with_sidecar(f, sidecar_json(backend=None))], 0, "ignored"
    ),
    "sidecar_foreign_format": CommandCase(
        "internal", lambda f: ["inspect", engine_with_sidecar(f, sidecar_json(format="polygraphy/9"))], 0, "ignored"
    ),
    "sidecar_wrong_types": CommandCase(
        "internal",
        lambda f: ["inspect", engine_with_sidecar(f, sidecar_json(network={"num_layers": "many"}))],
        0,
        "ignored",
    ),
    "sidecar_not_json": CommandCase("internal", lambda f: ["inspect", engine_with_sidecar(f, b"\xff{")], 0, "ignored"),
    "engine_is_a_device": CommandCase(
        "dos",
        lambda f: (os.symlink("/dev/zero", f / "z.engine"), ["inspect", str(f / "z.engine")])[1],
        INVALID,
        "regular",
    ),
    "recipe_pass_options_a_list": CommandCase(
        "internal", lambda f: _recipe(f, "passes: [{name: cleanup, options: [1, 2]}]\n"), INVALID, "mapping"
    ),
    "recipe_pass_options_a_string": CommandCase(
        "internal", lambda f: _recipe(f, "passes: [{name: cleanup, options: fast}]\n"), INVALID, "mapping"
    ),
    "recipe_pass_shorthand_with_list": CommandCase(
        "internal", lambda f: _recipe(f, "passes: [{cleanup: [1, 2]}]\n"), INVALID, "a pass must be"
    ),
    "recipe_shapes_a_list": CommandCase("internal", lambda f: _recipe(f, "shapes: [1, 2]\n"), INVALID, "mapping"),
    "recipe_tolerances_a_list": CommandCase("internal", lambda f: _recipe(f, "tolerances: [1]\n"), INVALID, "mapping"),
    "recipe_not_utf8": CommandCase("internal", lambda f: _recipe(f, b"passes: [cl\xffeanup]\n"), INVALID, "UTF-8"),
    "cache_dir_is_a_file": CommandCase(
        "internal",
        lambda f: _quantize(f, np.ones((4, 4), np.float32), "--cache-dir", write_file(f, "cache", "a file")),
        INVALID,
        "--cache-dir",
    ),
    "token_id_past_the_table": CommandCase(
        "internal",
        lambda f: [
            "verify",
            embedding_model(f),
            embedding_model(f),
            "--load-inputs",
            npz_file(f, ids=np.full((2, 3), 99)),
        ],
        INVALID,
        "holds id 99",
    ),
    "negative_token_id": CommandCase(
        "internal",
        lambda f: [
            "verify",
            embedding_model(f),
            embedding_model(f),
            "--load-inputs",
            npz_file(f, ids=np.full((2, 3), -1)),
        ],
        INVALID,
        "holds id -1",
    ),
    "candidate_with_another_input_shape": CommandCase(
        "internal", lambda f: ["verify", matmul_model(f), matmul_model(f, "other.onnx", rows=5)], INVALID, "other.onnx"
    ),
    "load_inputs_of_another_dtype": CommandCase(
        "internal",
        lambda f: [
            "verify",
            matmul_model(f),
            matmul_model(f),
            "--load-inputs",
            npz_file(f, x=np.ones((2, 4), np.float64)),
        ],
        INVALID,
        "float64",
    ),
    "load_inputs_zero_rows": CommandCase(
        "internal",
        lambda f: [
            "verify",
            matmul_model(f),
            matmul_model(f),
            "--load-inputs",
            npz_file(f, x=np.ones((0, 4), np.float32)),
        ],
        INVALID,
        "no rows",
    ),
    "load_inputs_npy_named_npz": CommandCase(
        "internal",
        lambda f: (
            np.save(open(f / "in.npz", "wb"), np.ones((2, 4), np.float32)),  # noqa: SIM115 (closed at exit)
            ["verify", matmul_model(f), matmul_model(f), "--load-inputs", str(f / "in.npz")],
        )[1],
        INVALID,
        "single .npy",
    ),
    "dtypes_without_colon": CommandCase(
        "internal",
        lambda f: ["export", "tests.tiny_models:plain_mlp", "--dtypes", "int64", "-o", str(f / "e.onnx")],
        USAGE,
        "--dtypes 'int64'",
    ),
    "calibration_with_nan": CommandCase(
        "refuse",
        lambda f: _quantize(f, np.full((4, 4), np.nan, np.float32)),
        INVALID,
        "NaN",
    ),
    "calibration_of_another_shape": CommandCase(
        "refuse",
        lambda f: _quantize(f, np.ones((4, 7), np.float32)),
        INVALID,
        "calib.npz",
    ),
    "inspect_a_text_file": CommandCase(
        "refuse", lambda f: ["inspect", write_file(f, "notes.txt", "hello")], INVALID, "expected an .onnx file"
    ),
    "convert_out_is_a_file": CommandCase(
        "refuse", lambda f: ["convert", matmul_model(f), "-o", write_file(f, "taken", "x")], INVALID, "not a folder"
    ),
    # -- markup from data is printed as text
    "markup_in_missing_model_path": CommandCase(
        "markup", lambda f: ["inspect", str(f / "[bold]nope[/bold].onnx")], INVALID, "[bold]nope[/bold].onnx"
    ),
    "markup_in_unknown_input_name": CommandCase(
        "markup",
        lambda f: _build(f, "--shapes", "[red]x[/red]:1x4"),
        INVALID,
        "[red]x[/red]",
    ),
}


def main(out: Path) -> None:
    sys.path.insert(0, str(out))
    for name, case in CASES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        args = case.make(folder)
        print(f"{name:<36} trtforge {' '.join(args)[:160]}  (exit {case.exit_code}: {case.message})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bad_commands"))
