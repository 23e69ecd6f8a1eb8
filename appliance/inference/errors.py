"""Named errors of the inference runtime (all subclass :class:`ApplianceError`)."""

from __future__ import annotations

from appliance.errors import ApplianceError


class InferenceError(ApplianceError):
    """Base of every inference-runtime error."""


class PackageError(InferenceError):
    """A model package is missing, malformed, or its files do not match model.json."""


class DigestMismatchError(PackageError):
    """A file's sha256 differs from the one model.json declares."""


class ShapeMismatchError(PackageError):
    """model.json's input shape disagrees with the model file's real input shape."""


class BackendUnavailableError(InferenceError):
    """A back end's library (or device/delegate) is not present on this machine."""


class BackendLoadError(InferenceError):
    """A back end could not load a model file (corrupt file, unsupported op, delegate failure)."""


class InferenceRunError(InferenceError):
    """Running a loaded model failed."""


class SourceError(InferenceError):
    """A frame source could not be opened or stopped delivering frames."""


class ConfigError(InferenceError):
    """A pipeline configuration is invalid."""


class SelftestFailedError(InferenceError):
    """The self-test ran but the model is below its accuracy or latency gate."""

    exit_code = 3
