"""ONNX Runtime back end (CPU execution provider): the default on x86-64."""

from __future__ import annotations

from typing import Any

import numpy as np

from appliance.inference.backends.base import Backend, BackendOptions, Dim, LoadedModel, TensorInfo
from appliance.inference.errors import BackendLoadError, BackendUnavailableError, InferenceRunError
from appliance.inference.package import ModelFile, ModelPackage

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(f"onnxruntime: library not installed ({exc})") from None
    return onnxruntime


def _info(arg: Any) -> TensorInfo:
    shape: tuple[Dim, ...] = tuple(d if isinstance(d, int) else str(d) for d in arg.shape)
    return TensorInfo(arg.name, shape, np.dtype(_ORT_DTYPES.get(arg.type, np.float32)))


class OrtModel(LoadedModel):
    """An InferenceSession bound to its first input."""

    session: Any = None

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        try:
            outs = self.session.run(None, {self.input.name: batch})
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceRunError(f"{self.describe()}: {exc}") from exc
        return [np.asarray(o) for o in outs]


class OnnxRuntimeBackend(Backend):
    """onnxruntime on the CPU execution provider, intra-op threads set explicitly."""

    name = "onnxruntime"
    formats = ("onnx",)

    def probe(self) -> str:
        return str(_ort().__version__)

    def _load(
        self, package: ModelPackage, f: ModelFile, data: bytes, options: BackendOptions
    ) -> LoadedModel:
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                data, sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise BackendLoadError(
                f"{package.path_of(f)}: onnxruntime cannot load it: {exc}"
            ) from None
        model = OrtModel(
            backend=self.name,
            device=f"CPU (onnxruntime {ort.__version__}, {options.threads} thread(s))",
            package=package,
            file=f,
            inputs=[_info(i) for i in session.get_inputs()],
            outputs=[_info(o) for o in session.get_outputs()],
        )
        model.session = session
        return model
