"""The embeddable API: one function per use case, keyword options, a result with its report.

    from converter import api

    result = api.convert("minilm", out="build/minilm", precision="fp16")
    assert result.passed, result.report["verification"]

    api.export("mypkg.models:make_net", "net.onnx", shapes={"x": (1, 3, 224, 224)})
    api.optimize("net.onnx", "net.opt.onnx", passes=["fold"], precision="fp16")
    profiles = {"x": api.ShapeProfile((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))}
    api.build("net.opt.onnx", "net.engine", shapes=profiles, target_gpus=["sm89"])
    check = api.verify("mypkg.models:make_net", ["net.opt.onnx", "net.engine"])
    quantized = api.quantize("minilm", "minilm.int8.onnx", mode="int8", max_cosine_drop=0.005)
    smallest = api.convert("decoder-lm", out="build/lm", budget=api.BudgetOptions("ppl<=+5%", objective="flops"))
    print(check.report["verified"], quantized.report["accuracy"])

Each function takes paths and plain keyword options, returns a result object whose
`.report` is the dict `trtforge` prints (`--json`), and raises TrtforgeError
subclasses with one-line messages (converter.core.errors maps them to exit codes).
The CLI (converter/cli/) is a thin layer over these functions; the use cases
themselves live in converter/pipelines/.
"""

from __future__ import annotations

from converter.core.errors import TrtforgeError
from converter.core.profiles import ShapeProfile
from converter.pipelines.budget.choose import BudgetOptions
from converter.pipelines.budget.spec import Budget
from converter.pipelines.build import BuildResult, build
from converter.pipelines.build_matrix import BuildMatrixResult, build_matrix
from converter.pipelines.convert import ConvertResult, convert
from converter.pipelines.doctor import doctor
from converter.pipelines.drop_blocks import DropBlocksResult, drop_blocks
from converter.pipelines.export import ExportResult, export
from converter.pipelines.inspection import inspect
from converter.pipelines.optimize import OptimizeResult, optimize
from converter.pipelines.optimize import pass_catalogue as list_passes
from converter.pipelines.quantize import QuantizeOptions, QuantizeResult, quantize
from converter.pipelines.recipe import Recipe
from converter.pipelines.refit import RefitResult, refit
from converter.pipelines.verify import VerifyResult, verify
from converter.verification.tolerances import Tolerances
from passes.blocks.config import DropConfig

__all__ = [
    "export",
    "optimize",
    "build",
    "build_matrix",
    "verify",
    "inspect",
    "convert",
    "quantize",
    "drop_blocks",
    "list_passes",
    "doctor",
    "refit",
    "Budget",
    "BudgetOptions",
    "BuildMatrixResult",
    "BuildResult",
    "ConvertResult",
    "DropBlocksResult",
    "DropConfig",
    "ExportResult",
    "OptimizeResult",
    "QuantizeOptions",
    "QuantizeResult",
    "Recipe",
    "RefitResult",
    "ShapeProfile",
    "Tolerances",
    "TrtforgeError",
    "VerifyResult",
]
