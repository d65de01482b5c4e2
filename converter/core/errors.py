"""User-facing errors and the CLI exit codes they map to.

Every error a user can cause (bad file, bad option, unsupported op) is a
`TrtforgeError` subclass carrying a one-line message that names the thing at fault.
The CLI prints that line and exits with the class's `exit_code`; tracebacks are shown
only with `--debug`. Anything else that escapes is a bug and exits with INTERNAL.
"""

from __future__ import annotations


class ExitCode:
    """Documented process exit codes (README, "Exit codes")."""

    OK = 0
    INTERNAL = 1  # a bug in trtforge: please report it with --debug output
    USAGE = 2  # click's own code for bad flags/arguments
    ACCURACY_FAILED = 3  # verification ran and a tolerance was exceeded
    INVALID_INPUT = 4  # a model, data file, recipe or option is broken or missing
    UNSUPPORTED = 5  # valid input that no backend/pass can handle (e.g. an unknown op)
    BACKEND_UNAVAILABLE = 6  # the requested backend or runtime is not installed here
    INTERRUPTED = 130  # Ctrl-C (SIGINT): stopped, staging folders removed, nothing published
    TERMINATED = 143  # SIGTERM: the same


class TrtforgeError(Exception):
    """Base class: a one-line message for the user and an exit code for the CLI."""

    exit_code = ExitCode.INVALID_INPUT

    def __init__(self, message: str):
        super().__init__(message.strip().splitlines()[0] if message.strip() else type(self).__name__)


class InvalidInputError(TrtforgeError):
    """A file, option, recipe or data item is missing, corrupt or inconsistent."""


class UsageError(TrtforgeError):
    """An option's value is out of range (NaN, negative) or names something the model lacks."""

    exit_code = ExitCode.USAGE


class ModelLoadError(InvalidInputError):
    """An ONNX/torch model could not be read or failed validation."""


class ExportError(TrtforgeError):
    """torch -> ONNX export failed."""

    exit_code = ExitCode.UNSUPPORTED


class UnsupportedError(TrtforgeError):
    """The input is valid but nothing here can process it (op, dtype, option)."""

    exit_code = ExitCode.UNSUPPORTED


class BuildError(UnsupportedError):
    """The TensorRT parser or builder rejected the network."""


class BackendUnavailableError(TrtforgeError):
    """The requested backend or runtime cannot be imported or used on this machine."""

    exit_code = ExitCode.BACKEND_UNAVAILABLE


class Interrupted(BaseException):
    """SIGTERM, raised as an exception so that every `with`/`finally` cleans up on the way out.

    A BaseException, like KeyboardInterrupt: no `except Exception` may swallow it."""

    exit_code = ExitCode.TERMINATED


class AccuracyError(TrtforgeError):
    """Verification ran and at least one output exceeded its tolerance."""

    exit_code = ExitCode.ACCURACY_FAILED
