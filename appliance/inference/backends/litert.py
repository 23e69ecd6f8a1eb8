"""LiteRT back end (``ai_edge_litert``, else ``tflite_runtime``), with the Edge TPU delegate.

* ``ai_edge_litert`` is preferred; ``tflite_runtime`` is used only if it is what is installed.
  tflite-runtime 2.14 imports under numpy 2 but its Interpreter fails (``_ARRAY_API not found``),
  so that combination is reported unavailable instead of failing at the first frame.
* A package's Edge TPU file (format ``edgetpu-tflite``, or named ``*_edgetpu.tflite``) is the
  one that runs when the Edge TPU delegate loads: :meth:`LiteRtBackend.accelerated_file` names
  it and ``backends.load_model`` tries it before the CPU file. It loads only when sysfs shows an
  Edge TPU (the USB Accelerator before or after its firmware load, or a PCIe one:
  appliance/inference/edgetpu.py) and ``load_delegate('libedgetpu.so.1')`` succeeds; otherwise
  a BackendLoadError says which, and the CPU file runs (the chain raises an alert with the
  reason). :class:`EdgeTpuLibrary` is the one seam to libedgetpu (tests replace it: no Coral
  and no libedgetpu here).
* num_threads defaults to 1: with 2 threads on 2 cores the interpreter's latency is erratic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from appliance.inference.backends.base import Backend, BackendOptions, LoadedModel, TensorInfo
from appliance.inference.edgetpu import EdgeTpu, find_edgetpus, missing_reason
from appliance.inference.errors import (
    BackendLoadError,
    BackendUnavailableError,
    InferenceRunError,
    PackageError,
)
from appliance.inference.package import ModelFile, ModelPackage

EDGETPU_LIBRARY = "libedgetpu.so.1"


class EdgeTpuLibrary:
    """libedgetpu: its delegate, and the interpreter that runs a compiled file through it.

    The outermost edge of the Edge TPU path (what pycoral's ``make_interpreter`` does): tests
    stand in for it, since nothing here can run an ``edgetpu-custom-op``.
    """

    def open(self, module: Any, data: bytes, threads: int, device: str) -> Any:
        """An interpreter of ``data`` with the Edge TPU delegate for ``device`` (``usb:0``)."""
        try:
            delegate = module.load_delegate(EDGETPU_LIBRARY, {"device": device})
        except (ValueError, OSError, RuntimeError) as exc:
            raise EdgeTpuDelegateError(str(exc)) from None
        return module.Interpreter(
            model_content=data, num_threads=threads, experimental_delegates=[delegate]
        )


class EdgeTpuDelegateError(BackendLoadError):
    """``load_delegate('libedgetpu.so.1')`` failed (library missing, device busy or absent)."""


def interpreter_module() -> tuple[Any, str]:
    """The interpreter module in use and a label ``library version``."""
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter

        return interpreter, f"ai_edge_litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError as first:
        try:
            import tflite_runtime
            from tflite_runtime import interpreter as tfl
        except ImportError:
            raise BackendUnavailableError(
                f"litert: neither ai_edge_litert ({first}) nor tflite_runtime is installed"
            ) from None
        version = str(getattr(tflite_runtime, "__version__", "0"))
        major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if int(np.__version__.split(".")[0]) >= 2 and major_minor < (2, 15):
            raise BackendUnavailableError(
                f"litert: tflite_runtime {version} does not work with numpy {np.__version__} "
                "(Interpreter fails: _ARRAY_API not found); install ai-edge-litert or numpy<2"
            ) from None
        return tfl, f"tflite_runtime {version}"


def _info(d: dict[str, Any]) -> TensorInfo:
    scale, zero_point = d.get("quantization", (0.0, 0))
    return TensorInfo(
        str(d["name"]),
        tuple(int(x) for x in d["shape"]),
        np.dtype(d["dtype"]),
        float(scale),
        int(zero_point),
    )


def is_edgetpu(f: ModelFile) -> bool:
    return f.format == "edgetpu-tflite" or f.path.endswith("_edgetpu.tflite")


class LiteRtModel(LoadedModel):
    """A TFLite interpreter with tensors allocated for the declared input shape."""

    interpreter: Any = None
    in_index: int = 0
    out_indices: tuple[int, ...] = ()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        try:
            self.interpreter.set_tensor(self.in_index, batch)
        except Exception as exc:  # ValueError: wrong dtype or shape
            raise InferenceRunError(f"{self.describe()}: {exc}") from exc
        return self._invoke()

    def _invoke(self) -> list[np.ndarray]:
        try:
            self.interpreter.invoke()
            # get_tensor copies, so results stay valid after the next invoke.
            return [self.interpreter.get_tensor(i) for i in self.out_indices]
        except Exception as exc:  # RuntimeError from the interpreter
            raise InferenceRunError(f"{self.describe()}: {exc}") from exc

    def _input_buffer(self) -> np.ndarray | None:
        """The interpreter's input tensor: no ``set_tensor`` copy (600 KB a frame for pose).

        ``run_frame`` drops this view before ``invoke``, so the interpreter's own guard (it
        refuses to run while a numpy view of its memory is alive) stays in force: a ``read``
        that kept one fails the next frame with InferenceRunError, not read stale memory.
        """
        try:
            return self.interpreter.tensor(self.in_index)()  # type: ignore[no-any-return]
        except Exception as exc:
            raise InferenceRunError(f"{self.describe()}: input tensor: {exc}") from exc

    def _run_in_place(self) -> list[np.ndarray]:
        interp = self.interpreter
        try:
            interp.invoke()
            return [interp.tensor(i)() for i in self.out_indices]
        except Exception as exc:  # RuntimeError from the interpreter
            raise InferenceRunError(f"{self.describe()}: {exc}") from exc


class LiteRtBackend(Backend):
    """LiteRT / TFLite interpreter on the CPU, or the Edge TPU via its delegate."""

    name = "litert"
    formats = ("tflite", "edgetpu-tflite")

    def __init__(self, edgetpu: EdgeTpuLibrary | None = None) -> None:
        self.edgetpu = edgetpu or EdgeTpuLibrary()

    def probe(self) -> str:
        return interpreter_module()[1]

    def accelerated_file(self, package: ModelPackage) -> ModelFile | None:
        """The package's Edge TPU file: tried first, the CPU file when it does not load."""
        return next((f for f in package.manifest.files if is_edgetpu(f)), None)

    def choose_file(self, package: ModelPackage, path: str | None = None) -> ModelFile:
        if path is not None:
            return package.select_file(self.formats, path)
        # The CPU file, FP32 first. The Edge TPU file is tried before it by load_model
        # (accelerated_file); here it is picked only when it is the only TFLite file.
        files = [f for f in package.manifest.files if f.format in self.formats]
        if not files:
            raise PackageError(
                f"{package.manifest_path}: files: no TFLite file for the litert back end"
            )
        order = {"fp32": 0, "fp16": 1, "int8": 2, "uint8": 2}
        return sorted(files, key=lambda f: (is_edgetpu(f), order[f.precision]))[0]

    def _load(
        self, package: ModelPackage, f: ModelFile, data: bytes, options: BackendOptions
    ) -> LoadedModel:
        module, label = interpreter_module()
        where = package.path_of(f)
        device = f"CPU ({label}, {options.threads} thread(s))"
        try:
            if is_edgetpu(f):
                tpu, device = _edgetpu_device_of(where, options)
                interp = self.edgetpu.open(module, data, options.threads, device)
                device = f"Edge TPU {device}: {tpu.describe()} ({label})"
            else:
                interp = module.Interpreter(model_content=data, num_threads=options.threads)
            interp.allocate_tensors()
        except EdgeTpuDelegateError as exc:
            raise BackendLoadError(
                f"{where}: Edge TPU delegate {EDGETPU_LIBRARY} could not be loaded ({exc}); "
                "install libedgetpu1-std and re-plug the Coral; the CPU file runs meanwhile"
            ) from None
        except BackendLoadError:
            raise
        except Exception as exc:
            raise BackendLoadError(f"{where}: {label} cannot load it: {exc}") from None
        ins, outs = interp.get_input_details(), interp.get_output_details()
        model = LiteRtModel(
            backend=self.name,
            device=device,
            package=package,
            file=f,
            inputs=[_info(d) for d in ins],
            outputs=[_info(d) for d in outs],
        )
        model.interpreter = interp
        model.in_index = int(ins[0]["index"])
        model.out_indices = tuple(int(d["index"]) for d in outs)
        check_quantization(model)
        return model


def _edgetpu_device_of(where: Path, options: BackendOptions) -> tuple[EdgeTpu, str]:
    """The Edge TPU sysfs shows and libedgetpu's ``device`` option for it, or why there is none."""
    root = Path(options.sysfs_root)
    tpus = find_edgetpus(root)
    if not tpus:
        raise BackendLoadError(f"{where}: {missing_reason(root)}")
    return tpus[0], options.device or tpus[0].delegate_device


def check_quantization(model: LoadedModel) -> None:
    """model.json's quantisation must match the interpreter's real input scale/zero-point."""
    q = model.file.quantization
    real = model.input
    if real.dtype.kind not in "iu":
        return
    if q is None:
        raise PackageError(
            f"{model.package.manifest_path}: files[{model.file.path}].quantization: missing, "
            f"but the model's input is {real.dtype} "
            f"(scale {real.scale}, zero_point {real.zero_point})"
        )
    if (
        np.dtype(q.input_dtype) != real.dtype
        or q.input_zero_point != real.zero_point
        or not np.isclose(q.input_scale, real.scale, rtol=1e-4)
    ):
        raise PackageError(
            f"{model.package.manifest_path}: files[{model.file.path}].quantization: says "
            f"{q.input_dtype} scale {q.input_scale} zero_point {q.input_zero_point}, "
            f"the model's input is {real.dtype} scale {real.scale} zero_point {real.zero_point}"
        )
