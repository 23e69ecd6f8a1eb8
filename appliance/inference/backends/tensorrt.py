"""TensorRT back end: build an engine from the ONNX on the device, cache it in the data partition.

NOT EXECUTED on our machines: TensorRT is not installable here (docs/decisions.md §25) and no GPU is
present. The cache-key logic (:func:`engine_key`, :func:`cached_engine`) is pure and unit-tested;
the TensorRT / CUDA calls follow the TensorRT 10 Python API (``build_serialized_network``,
``set_tensor_address``, ``execute_async_v3``) with cuda-python's ``cudart`` for memory, and are
kept deliberately small for review.

The engine is cached under ``<cache_dir>/<key>.engine`` where the key hashes (model sha256,
TensorRT version, GPU name): a new model, a JetPack upgrade or a different GPU each give a new
key, and stale engines are deleted when a new one is written. The builder flags
(:func:`builder_flags`) come from the package: ``INT8`` for an INT8 file (symmetric Q/DQ, made by
``kiln model optimise --target jetson-orin``), ``FP16`` for a file that says ``allow_fp16`` (the
recipe's ``[models] fp16``) or is FP16; when any is set it is part of the key too (an engine built
without flags keeps the key it always had).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from appliance.fsutil import atomic_write_bytes
from appliance.inference.backends.base import Backend, BackendOptions, LoadedModel, TensorInfo
from appliance.inference.errors import BackendLoadError, BackendUnavailableError, InferenceRunError
from appliance.inference.package import ModelFile, ModelPackage, expected_shape

log = logging.getLogger(__name__)
DEFAULT_CACHE_DIR = "/data/edgekiln/trt-cache"
WORKSPACE_BYTES = 1 << 28


def engine_key(
    model_sha256: str, trt_version: str, gpu_name: str, flags: tuple[str, ...] = ()
) -> str:
    """Cache key of an engine: changes when the model, TensorRT, the GPU or the flags change."""
    text = f"{model_sha256}\n{trt_version}\n{gpu_name}"
    if flags:  # without flags the key is the one engines were always cached under
        text += "\n" + ",".join(sorted(flags))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def builder_flags(f: ModelFile) -> tuple[str, ...]:
    """The ``trt.BuilderFlag`` names the engine of file ``f`` is built with.

    ``INT8``: an INT8 file is explicit quantisation (Q/DQ); TensorRT uses its INT8 kernels only
    with the flag. ``FP16``: an FP16 file, or one whose package allows FP16 for float layers.
    """
    if f.precision == "uint8":
        raise BackendLoadError(
            f"{f.path}: precision uint8: TensorRT takes int8 Q/DQ (symmetric, zero-point 0); "
            "make the file with kiln model optimise --target jetson-orin"
        )
    flags = []
    if f.precision == "fp16" or f.allow_fp16:
        flags.append("FP16")
    if f.precision == "int8":
        flags.append("INT8")
    return tuple(flags)


def cached_engine(cache_dir: Path, key: str) -> bytes | None:
    """The cached engine for ``key``, or None if there is none."""
    path = cache_dir / f"{key}.engine"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def store_engine(cache_dir: Path, key: str, engine: bytes) -> Path:
    """Write the engine atomically and delete engines with other keys (now stale)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.engine"
    atomic_write_bytes(path, engine)
    for old in cache_dir.glob("*.engine"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def _libs() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
        from cuda import cudart
    except ImportError as exc:
        raise BackendUnavailableError(
            f"tensorrt: library not installed ({exc}); it ships with JetPack on a Jetson"
        ) from None
    return trt, cudart


def _check(result: tuple[Any, ...], what: str) -> Any:
    err, *rest = result
    if int(err) != 0:
        raise InferenceRunError(f"tensorrt: {what} failed with CUDA error {err}")
    return rest[0] if rest else None


class TrtModel(LoadedModel):
    """An execution context with device buffers for every I/O tensor."""

    context: Any = None
    cudart: Any = None
    stream: Any = None
    buffers: dict[str, int] = {}  # noqa: RUF012 - replaced per instance in _load
    host_outputs: list[np.ndarray] = []  # noqa: RUF012

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        cr, name = self.cudart, self.input.name
        batch = np.ascontiguousarray(batch, dtype=self.input.dtype)
        h2d, d2h = (
            cr.cudaMemcpyKind.cudaMemcpyHostToDevice,
            cr.cudaMemcpyKind.cudaMemcpyDeviceToHost,
        )
        _check(
            cr.cudaMemcpyAsync(
                self.buffers[name], batch.ctypes.data, batch.nbytes, h2d, self.stream
            ),
            "copy in",
        )
        if not self.context.execute_async_v3(self.stream):
            raise InferenceRunError(f"{self.describe()}: execute_async_v3 failed")
        for out, host in zip(self.outputs, self.host_outputs, strict=True):
            _check(
                cr.cudaMemcpyAsync(
                    host.ctypes.data, self.buffers[out.name], host.nbytes, d2h, self.stream
                ),
                "copy out",
            )
        _check(cr.cudaStreamSynchronize(self.stream), "synchronize")
        return [h.copy() for h in self.host_outputs]


class TensorRtBackend(Backend):
    """TensorRT engine built from the package's ONNX file, cached per (model, TensorRT, GPU)."""

    name = "tensorrt"
    formats = ("onnx",)

    def __init__(self, libs: Callable[[], tuple[Any, Any]] | None = None) -> None:
        # ``libs`` returns the (tensorrt, cudart) modules; tests stand in for the missing ones.
        self.libs = libs or _libs

    def probe(self) -> str:
        trt, _ = self.libs()
        return f"tensorrt {trt.__version__}"

    def _build(
        self,
        trt: Any,
        logger: Any,
        data: bytes,
        where: Path,
        flags: tuple[str, ...] = (),
        shape: tuple[int, ...] | None = None,
    ) -> bytes:
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(data):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendLoadError(f"{where}: TensorRT cannot parse the ONNX: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        for flag in flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        # A dynamic dimension (the exported "batch") needs an optimisation profile, or the build
        # fails: the device runs exactly model.json's shape, so min = opt = max = that shape.
        profile = None
        for i in range(network.num_inputs):
            t = network.get_input(i)
            if any(int(d) < 0 for d in t.shape):
                if shape is None:
                    raise BackendLoadError(f"{where}: input {t.name!r} has dynamic dimensions")
                profile = profile or builder.create_optimization_profile()
                profile.set_shape(t.name, shape, shape, shape)
        if profile is not None:
            config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise BackendLoadError(f"{where}: TensorRT engine build failed (see the TensorRT log)")
        return bytes(engine)

    def _load(
        self, package: ModelPackage, f: ModelFile, data: bytes, options: BackendOptions
    ) -> LoadedModel:
        trt, cr = self.libs()
        where = package.path_of(f)
        shape = expected_shape(package.manifest, f)
        device_index = int(options.device or 0)
        props = _check(cr.cudaGetDeviceProperties(device_index), "cudaGetDeviceProperties")
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        cache_dir = Path(options.cache_dir or DEFAULT_CACHE_DIR)
        flags = builder_flags(f)
        key = engine_key(f.sha256, trt.__version__, gpu, flags)
        logger = trt.Logger(trt.Logger.WARNING)
        blob = cached_engine(cache_dir, key)
        if blob is None:
            log.info(
                "building TensorRT engine for %s on %s, flags %s (takes minutes)",
                where,
                gpu,
                "+".join(flags) or "none",
            )
            blob = self._build(trt, logger, data, where, flags, shape)
            store_engine(cache_dir, key, blob)
        engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
        if engine is None:  # a corrupt cache entry: drop it so the next start rebuilds
            (cache_dir / f"{key}.engine").unlink(missing_ok=True)
            raise BackendLoadError(
                f"{cache_dir}/{key}.engine: cannot deserialize; removed, will rebuild"
            )
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        for name in inputs:  # dynamic dims resolve on the context, outputs' shapes with them
            if any(int(d) < 0 for d in engine.get_tensor_shape(name)):
                context.set_input_shape(name, shape)
        infos: list[tuple[TensorInfo, bool]] = []
        for name in names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            dims = tuple(int(d) for d in context.get_tensor_shape(name))
            infos.append((TensorInfo(name, dims, dtype), name in inputs))
        model = TrtModel(
            backend=self.name,
            device=f"GPU {device_index} {gpu} (tensorrt {trt.__version__})",
            package=package,
            file=f,
            inputs=[t for t, is_in in infos if is_in],
            outputs=[t for t, is_in in infos if not is_in],
        )
        model.context = context
        model.cudart = cr
        model.stream = _check(cr.cudaStreamCreate(), "cudaStreamCreate")
        model.buffers = {}
        model.host_outputs = []
        for t, is_input in infos:
            dims = tuple(int(d) for d in t.shape)
            nbytes = int(np.prod(dims)) * t.dtype.itemsize
            model.buffers[t.name] = int(_check(cr.cudaMalloc(nbytes), "cudaMalloc"))
            model.context.set_tensor_address(t.name, model.buffers[t.name])
            if not is_input:
                model.host_outputs.append(np.empty(dims, dtype=t.dtype))
        return model
