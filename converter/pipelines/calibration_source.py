"""Where calibration data comes from: the one module that decides, for every use case.

In order of preference:
1. data the user gives (`--calib`: a folder of .npz/.npy, images or .txt, read by
   calibration/readers.py; text is tokenized with `--tokenizer`, else with the
   tokenizer of the demo the model was exported from);
2. the model's own real sample data: the torch spec's (a demo, or a user factory
   that returns a ModelSpec with real data), else the built-in demo the ONNX
   metadata `trtforge.sample_data` names;
3. nothing (None): never random noise. The caller says what to give.

Whether a run needs calibration data at all is the passes' own declaration
(`passes.registry.needs_calibration`), never a list of pass names kept here. When
the same sample source also feeds verification, the verifier's batches are skipped,
so accuracy is not measured on the samples the passes were calibrated on.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from calibration.data import CalibrationData, from_feeds
from calibration.readers import load_calibration
from converter.core.errors import InvalidInputError
from converter.core.metadata import SAMPLE_DATA, SOURCE, metadata_value
from converter.core.model_spec import ModelSpec
from converter.pipelines.model_ref import feeds_for_source
from passes.registry import PassSpec, needs_calibration, requiring_calibration

# convert: batches of the recipe's verify_batch_size, after the verification batches.
CONVERT_BATCHES = 16
# optimize: 4 batches of 8, what the drop-blocks pass read from the metadata itself before.
OPTIMIZE_BATCHES, OPTIMIZE_BATCH_SIZE = 4, 8
# quantize without --calib: batches of --batch-size.
QUANTIZE_BATCHES = 8


def default_tokenizer_dir(model: onnx.ModelProto) -> str | None:
    """The tokenizer of the demo an exported model came from (metadata 'trtforge.source')."""
    if metadata_value(model, SOURCE) == "minilm":
        from converter.demos.models import minilm_folder

        return str(minilm_folder())
    return None


def sample_calibration(
    model: onnx.ModelProto, batches: int, batch_size: int, skip: int = 0, spec: ModelSpec | None = None
) -> CalibrationData | None:
    """The model's own real sample data (`batches` after the first `skip`), or None.

    The torch spec's when it has real data, else what the ONNX metadata
    'trtforge.sample_data' names (a built-in demo: a file never makes trtforge run code).
    """
    if spec is not None and spec.sample_source != "synthetic":
        return from_feeds(spec.sample_feeds(skip + batches, batch_size)[skip:], spec.sample_source)
    source = metadata_value(model, SAMPLE_DATA)
    feeds = feeds_for_source(source, skip + batches, batch_size) if source else None
    return from_feeds(feeds[skip:], source) if feeds else None


def for_passes(
    passes: list[PassSpec],
    model: onnx.ModelProto,
    batches: int,
    batch_size: int,
    skip: int = 0,
    spec: ModelSpec | None = None,
) -> CalibrationData | None:
    """The model's own sample data when one of `passes` (groups expanded) needs calibration, else None."""
    if not needs_calibration([p.name for p in passes]):
        return None
    data = sample_calibration(model, batches, batch_size, skip, spec)
    if data is None:
        _refuse_without_data(requiring_calibration(passes))
    return data


def require_own_samples(
    passes: list[PassSpec], metadata: dict[str, str], spec: ModelSpec | None, given: str | None = None
) -> None:
    """Before any work: refuse passes that would change nothing without data when the model has no
    real sample data of its own (the spec's, or a built-in demo its ONNX `metadata` names) and none
    is `given` (a recipe's `calibration`)."""
    if given or (spec is not None and spec.sample_source != "synthetic"):
        return
    if metadata.get(SAMPLE_DATA):
        return
    _refuse_without_data(requiring_calibration(passes))


def _refuse_without_data(required: list[str]) -> None:
    if not required:
        return
    names = ", ".join(f"'{name}'" for name in required)
    subject = f"pass {names} needs" if len(required) == 1 else f"passes {names} need"
    raise InvalidInputError(
        f"{subject} calibration data and the model has no sample data of its own "
        "(a demo, or a factory returning a ModelSpec with real data): "
        "use `trtforge quantize MODEL --calib DIR` (or `drop-blocks --load-inputs`)"
    )


def for_convert(
    passes: list[PassSpec],
    model: onnx.ModelProto,
    spec: ModelSpec | None,
    skip_batches: int,
    batch_size: int,
    given: str | None = None,
) -> CalibrationData | None:
    """convert: the recipe's `calibration` data (`given`), else real calibration data disjoint from the
    verification batches, for passes that need it."""
    if given and needs_calibration([p.name for p in passes]):
        return load(given, model)
    return for_passes(passes, model, CONVERT_BATCHES, batch_size, skip_batches, spec)


def for_optimize(passes: list[PassSpec], model: onnx.ModelProto) -> CalibrationData | None:
    """optimize (an ONNX file alone): the sample data its metadata names, for passes that need it."""
    return for_passes(passes, model, OPTIMIZE_BATCHES, OPTIMIZE_BATCH_SIZE)


def load(
    calib: str | Path | CalibrationData | None,
    model: onnx.ModelProto,
    batch_size: int = 16,
    max_length: int = 128,
    tokenizer: str | Path | None = None,
    image_norm: str = "imagenet",
    spec: ModelSpec | None = None,
) -> CalibrationData | None:
    """quantize: the data given (checked against the model), else the model's own sample data, else None."""
    if isinstance(calib, CalibrationData):
        return calib.check(model)
    if calib:
        tokenizer = tokenizer or default_tokenizer_dir(model)
        return load_calibration(calib, model, batch_size, tokenizer, max_length, image_norm).check(model)
    return sample_calibration(model, QUANTIZE_BATCHES, batch_size, spec=spec)
