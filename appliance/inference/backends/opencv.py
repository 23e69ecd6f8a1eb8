"""OpenCV DNN back end (cv2.dnn, OpenCV's own CPU code): the universal fallback."""

from __future__ import annotations

from typing import Any

import numpy as np

from appliance.inference.backends.base import Backend, BackendOptions, LoadedModel, TensorInfo
from appliance.inference.errors import BackendLoadError, BackendUnavailableError, InferenceRunError
from appliance.inference.onnx_shape import onnx_input_dtype, onnx_inputs
from appliance.inference.package import ModelFile, ModelPackage


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise BackendUnavailableError(f"opencv: library not installed ({exc})") from None
    return cv2


class CvModel(LoadedModel):
    """A cv2.dnn.Net and its output layer names."""

    net: Any = None
    out_names: tuple[str, ...] = ()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        try:
            self.net.setInput(batch)
            outs = self.net.forward(list(self.out_names))
        except Exception as exc:  # cv2.error
            raise InferenceRunError(f"{self.describe()}: {exc}") from exc
        return [np.asarray(o) for o in outs]


class OpenCvBackend(Backend):
    """cv2.dnn on DNN_BACKEND_OPENCV / DNN_TARGET_CPU."""

    name = "opencv"
    formats = ("onnx",)

    def probe(self) -> str:
        return str(_cv2().__version__)

    def _load(
        self, package: ModelPackage, f: ModelFile, data: bytes, options: BackendOptions
    ) -> LoadedModel:
        cv2 = _cv2()
        where = str(package.path_of(f))
        # cv2.dnn cannot report input shapes: read them from the ONNX bytes ourselves.
        name, dims = onnx_inputs(data, where)[0]
        try:
            cv2.setNumThreads(options.threads)  # process-wide in OpenCV
            net = cv2.dnn.readNetFromONNX(np.frombuffer(data, dtype=np.uint8))
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            # No setPreferableTarget: CPU is the default and OpenCV 5's graph engine warns on it.
            out_names = tuple(net.getUnconnectedOutLayersNames())
        except Exception as exc:
            raise BackendLoadError(f"{where}: opencv cannot load it: {exc}") from None
        model = CvModel(
            backend=self.name,
            device=f"CPU (opencv {cv2.__version__} dnn, {options.threads} thread(s))",
            package=package,
            file=f,
            inputs=[TensorInfo(name, tuple(dims), onnx_input_dtype(data, name))],
            outputs=[TensorInfo(n, (), np.dtype(np.float32)) for n in out_names],
        )
        model.net = net
        model.out_names = out_names
        return model
