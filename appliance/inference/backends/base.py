"""The one small back-end interface, and the checks every back end shares.

A back end turns a verified model file into a :class:`LoadedModel` that runs a tensor batch and
reports what it runs on. Back ends import their library inside :meth:`Backend.probe` /
:meth:`Backend.load`, so importing this package never needs onnxruntime, openvino, cv2, ...
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import numpy as np

from appliance.inference.errors import BackendLoadError, InferenceRunError, ShapeMismatchError
from appliance.inference.package import (
    ModelFile,
    ModelPackage,
    check_labels,
    expected_shape,
    file_layout,
)

log = logging.getLogger(__name__)

Dim = int | str
T = TypeVar("T")
R = TypeVar("R")
# Writes one input batch into the buffer it is given (and returns that buffer with what else it
# made, e.g. the letterbox), or, given None, into one of its own.
Fill = Callable[[np.ndarray | None], tuple[np.ndarray, T]]
# Reads the raw outputs (with what ``Fill`` made) into a result that holds no array of them.
Read = Callable[[list[np.ndarray], T], R]


@dataclass(frozen=True)
class BackendOptions:
    """Knobs a caller may set; back ends ignore what does not apply to them."""

    threads: int = 1
    device: str | None = (
        None  # openvino: "CPU"/"GPU"/"NPU"; litert edgetpu: "usb:0"; tensorrt: GPU index
    )
    cache_dir: str | None = None  # tensorrt engine cache (in the data partition)
    precision_f32: bool = True  # openvino: keep f32 (bf16 drifts from the reference outputs)
    sysfs_root: str = "/sys"  # litert: where to look for an Edge TPU (tests pass their own tree)


@dataclass(frozen=True)
class TensorInfo:
    """Shape, dtype and quantisation of a model input or output as the runtime reports it."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype
    scale: float = 0.0  # 0 means not quantised
    zero_point: int = 0


@dataclass
class LoadedModel(ABC):
    """A model file loaded by one back end, ready to run batches."""

    backend: str
    device: str
    package: ModelPackage
    file: ModelFile
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)

    @property
    def layout(self) -> str:
        return file_layout(self.package.manifest, self.file)

    @property
    def input(self) -> TensorInfo:
        return self.inputs[0]

    @abstractmethod
    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one input batch; return the raw output tensors in the model's output order."""

    def run_frame(self, fill: Fill[T], read: Read[T, R]) -> tuple[R, float, float]:
        """``fill`` the input, run, ``read`` the outputs: (the result, t_filled, t_ran).

        A back end whose runtime owns its tensors (:meth:`_input_buffer`) hands ``fill`` the
        input buffer (the pre-processor writes the tensor there) and ``read`` views of the
        outputs (:meth:`_run_in_place`): no copy either way. The others pass None and copy
        (:meth:`run`), as does a ``fill`` that returns a batch of its own. The times are
        ``time.perf_counter()`` when ``fill`` returned and when the model had run: the
        pipeline's pre/infer/post split.

        Every reference to the runtime's memory held here is dropped before the model runs and
        after ``read``, also when ``fill`` or ``read`` raise (not kept alive by a traceback):
        LiteRT refuses to run while one is alive. ``read`` must not keep any either.
        """
        buffer = self._input_buffer()
        try:
            batch, extra = fill(buffer)
        except BaseException:
            del buffer
            raise
        t_filled = time.perf_counter()
        own = buffer is not None and batch is buffer
        del buffer
        if own:
            del batch
            outs = self._run_in_place()
        else:
            outs = self.run(batch)
        t_ran = time.perf_counter()
        try:
            return read(outs, extra), t_filled, t_ran
        finally:
            del outs

    def _input_buffer(self) -> np.ndarray | None:
        """The runtime's own input tensor to write a batch into, or None (the default)."""
        return None

    def _run_in_place(self) -> list[np.ndarray]:
        """Run on the batch written into :meth:`_input_buffer`; views of the outputs."""
        raise NotImplementedError(f"{self.backend}: no input buffer of its own")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (optional)."""

    def describe(self) -> str:
        return f"{self.package.name}/{self.file.path} on {self.backend} ({self.device})"


class Backend(ABC):
    """A runtime that can load some model-file formats."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]  # file formats in preference order

    @abstractmethod
    def probe(self) -> str:
        """Import the library; return its version. Raise BackendUnavailableError if absent."""

    @abstractmethod
    def _load(
        self, package: ModelPackage, f: ModelFile, data: bytes, options: BackendOptions
    ) -> LoadedModel:
        """Load verified model bytes (sha256 already checked)."""

    def choose_file(self, package: ModelPackage, path: str | None = None) -> ModelFile:
        return package.select_file(self.formats, path)

    def accelerated_file(self, package: ModelPackage) -> ModelFile | None:
        """A file to try before :meth:`choose_file`'s when an accelerator may run it (None)."""
        return None

    def load(
        self, package: ModelPackage, path: str | None = None, options: BackendOptions | None = None
    ) -> LoadedModel:
        """Probe, read + verify the file, load it, check its real input shape, warm it up."""
        options = options or BackendOptions()
        self.probe()
        f = self.choose_file(package, path)
        data = package.read_verified(f)
        model = self._load(package, f, data, options)
        check_input_shape(model)
        warm_up(model)
        log.info("loaded %s", model.describe())
        return model


def _dims_match(real: tuple[Dim, ...], want: tuple[int, ...]) -> bool:
    if len(real) != len(want):
        return False
    # Symbolic or -1 dims (dynamic batch) accept any size.
    return all(not isinstance(r, int) or r < 0 or r == w for r, w in zip(real, want, strict=True))


def check_input_shape(model: LoadedModel) -> None:
    """Refuse a model whose real input shape disagrees with model.json."""
    want = expected_shape(model.package.manifest, model.file)
    real = model.input.shape
    if not _dims_match(real, want):
        raise ShapeMismatchError(
            f"{model.package.manifest_path}: input.shape: says {list(want)} ({model.layout}) for "
            f"{model.file.path}, but the model's input {model.input.name!r} is {list(real)}; "
            "fix model.json or rebuild the package"
        )


def warm_up(model: LoadedModel) -> None:
    """Run one zero batch so the first real frame is not slow and a broken model fails at load."""
    want = expected_shape(model.package.manifest, model.file)
    try:
        raw = model.run(np.zeros(want, dtype=model.input.dtype))
    except InferenceRunError as exc:
        raise BackendLoadError(f"{model.describe()}: warm-up inference failed: {exc}") from None
    check_labels(model.package, model.file, raw)
