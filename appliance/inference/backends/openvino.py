"""OpenVINO back end: CPU by default (device configurable), f32 precision hint by default.

On this CPU OpenVINO otherwise picks bf16 and drifts from the reference outputs by up to 0.025
(docs/decisions.md §24); ``INFERENCE_PRECISION_HINT=f32`` brings it to ~4e-6.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from appliance.inference.backends.base import Backend, BackendOptions, Dim, LoadedModel, TensorInfo
from appliance.inference.errors import BackendLoadError, BackendUnavailableError, InferenceRunError
from appliance.inference.package import ModelFile, ModelPackage


def _ov() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(f"openvino: library not installed ({exc})") from None
    return openvino


def _info(port: Any) -> TensorInfo:
    shape: tuple[Dim, ...] = tuple(
        d.get_length() if d.is_static else "?" for d in port.get_partial_shape()
    )
    try:
        name = port.get_any_name()
    except RuntimeError:  # unnamed port
        name = ""
    return TensorInfo(name, shape, np.dtype(port.get_element_type().to_dtype()))


class OvModel(LoadedModel):
    """A compiled model with one synchronous infer request."""

    request: Any = None
    weights: Any = None  # an IR's verified .bin bytes: the compiled model may still share them

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        request = self.request
        try:
            tensor = request.get_input_tensor(0).data
            if tensor.shape == batch.shape and tensor.dtype == batch.dtype:
                # Into the request's own tensor: 30 us less per call than infer({0: batch})
                # on the reference model (145 vs 175 us), which dispatches the dict in Python.
                tensor[...] = batch
                request.infer()
            else:  # another shape (a dynamic input) or dtype: OpenVINO converts or refuses
                request.infer({0: batch})
            # Copy: the request reuses its output buffers on the next call.
            return [np.array(request.get_output_tensor(i).data) for i in range(len(self.outputs))]
        except Exception as exc:
            raise InferenceRunError(f"{self.describe()}: {exc}") from exc

    def _input_buffer(self) -> np.ndarray | None:
        """The request's input tensor. Its output views (``_run_in_place``) are valid only
        until the next inference: ``read`` must not keep them."""
        try:
            return self.request.get_input_tensor(0).data  # type: ignore[no-any-return]
        except Exception as exc:
            raise InferenceRunError(f"{self.describe()}: input tensor: {exc}") from exc

    def _run_in_place(self) -> list[np.ndarray]:
        request = self.request
        try:
            request.infer()
            return [request.get_output_tensor(i).data for i in range(len(self.outputs))]
        except Exception as exc:
            raise InferenceRunError(f"{self.describe()}: {exc}") from exc


class OpenVinoBackend(Backend):
    """OpenVINO runtime reading the ONNX file (or an IR) directly."""

    name = "openvino"
    formats = ("openvino-ir", "onnx")

    def probe(self) -> str:
        return str(_ov().get_version())

    def _load(
        self, package: ModelPackage, f: ModelFile, data: bytes, options: BackendOptions
    ) -> LoadedModel:
        ov = _ov()
        device = options.device or "CPU"
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = options.threads
        if options.precision_f32:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        # Load the verified bytes, not the paths: nothing can swap a file in between.
        weights = package.read_weights(f) if f.format == "openvino-ir" else b""
        try:
            tensor = ov.Tensor(np.frombuffer(weights, dtype=np.uint8))
            model = core.read_model(model=data, weights=tensor)
            compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise BackendLoadError(
                f"{package.path_of(f)}: openvino ({device}) cannot load it: {exc}"
            ) from None
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        loaded = OvModel(
            backend=self.name,
            device=f"{device} (openvino {ov.get_version().split('-')[0]}, "
            f"{options.threads} thread(s), precision {precision})",
            package=package,
            file=f,
            inputs=[_info(p) for p in model.inputs],
            outputs=[_info(p) for p in model.outputs],
        )
        loaded.request = compiled.create_infer_request()
        loaded.weights = weights
        return loaded
