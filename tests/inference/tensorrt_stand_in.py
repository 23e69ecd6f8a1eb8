"""A stand-in for the ``tensorrt`` and ``cuda.cudart`` modules, which cannot be installed here.

It keeps the TensorRT 10 API shape the back end uses, with TensorRT's rules where they decide
what our code must do: an input with a dynamic dimension needs an optimisation profile or the
build fails; an engine's dynamic dimensions stay -1 until ``context.set_input_shape``; a blob
that is not an engine deserialises to None. "Device memory" is host memory from ``ctypes``, so
``cudaMemcpyAsync`` is a real ``memmove`` between real addresses, and the "engine" runs the ONNX
it was built from on onnxruntime (CPU). Nothing of it is the code under test.
"""

from __future__ import annotations

import ctypes
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort

MAGIC = b"TRT-STAND-IN\n"
INPUT, OUTPUT = "INPUT", "OUTPUT"


def _ort_dtype(t: str) -> np.dtype:
    return np.dtype({"tensor(float)": np.float32, "tensor(int64)": np.int64}[t])


class _Session:
    def __init__(self, onnx: bytes) -> None:
        self.sess = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        self.ins = self.sess.get_inputs()
        self.outs = self.sess.get_outputs()


class Network:
    def __init__(self) -> None:
        self.session: _Session | None = None

    @property
    def num_inputs(self) -> int:
        return len(self.session.ins) if self.session else 0

    def get_input(self, i: int) -> Any:
        t = self.session.ins[i]  # type: ignore[union-attr]
        return SimpleNamespace(
            name=t.name, shape=[d if isinstance(d, int) else -1 for d in t.shape]
        )


class Engine:
    def __init__(self, onnx: bytes, shapes: dict[str, list[int]]) -> None:
        self.s = _Session(onnx)
        self.shapes = shapes
        self.tensors = [(t, INPUT) for t in self.s.ins] + [(t, OUTPUT) for t in self.s.outs]

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, i: int) -> str:
        return str(self.tensors[i][0].name)

    def _t(self, name: str) -> tuple[Any, str]:
        return next((t, m) for t, m in self.tensors if t.name == name)

    def get_tensor_mode(self, name: str) -> str:
        return self._t(name)[1]

    def get_tensor_dtype(self, name: str) -> np.dtype:
        return _ort_dtype(self._t(name)[0].type)

    def get_tensor_shape(self, name: str) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in self._t(name)[0].shape]

    def create_execution_context(self) -> Context:
        return Context(self)


class Context:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if list(shape) != self.engine.shapes.get(name):
            raise ValueError(f"{name}: {shape} outside the optimisation profile")
        self.input_shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> list[int]:
        dims = self.engine.get_tensor_shape(name)
        if name in self.input_shapes:
            return list(self.input_shapes[name])
        batch = next(iter(self.input_shapes.values()), (1,))[0]
        return [batch if d < 0 else d for d in dims]  # outputs follow the input's batch

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def execute_async_v3(self, stream: int) -> bool:
        feeds = {}
        for t in self.engine.s.ins:
            shape = self.get_tensor_shape(t.name)
            dtype = _ort_dtype(t.type)
            n = int(np.prod(shape)) * dtype.itemsize
            raw = (ctypes.c_char * n).from_address(self.addresses[t.name])
            feeds[t.name] = np.frombuffer(bytes(raw), dtype).reshape(shape)
        for t, value in zip(self.engine.s.outs, self.engine.s.sess.run(None, feeds), strict=True):
            out = np.ascontiguousarray(value, _ort_dtype(t.type))
            ctypes.memmove(self.addresses[t.name], out.ctypes.data, out.nbytes)
        return True


class TensorRtStandIn:
    """The ``tensorrt`` module's surface the back end uses; counts builds, records flags."""

    __version__ = "10.3.0"

    def __init__(self) -> None:
        self.builds = 0
        self.flags: list[str] = []
        self.BuilderFlag = SimpleNamespace(FP16="FP16", INT8="INT8")
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        self.TensorIOMode = SimpleNamespace(INPUT=INPUT, OUTPUT=OUTPUT)
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
        trt = self

        class OnnxParser:
            num_errors = 0

            def __init__(self, network: Network, logger: Any) -> None:
                self.network = network

            def parse(self, data: bytes) -> bool:
                self.network.session = _Session(data)
                self.network.onnx = data  # type: ignore[attr-defined]
                return True

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, list[int]] = {}

            def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
                assert list(lo) == list(opt) == list(hi)
                self.shapes[name] = list(opt)

        class Config:
            def __init__(self) -> None:
                self.profiles: list[Profile] = []

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                pass

            def set_flag(self, flag: str) -> None:
                trt.flags.append(flag)

            def add_optimization_profile(self, profile: Profile) -> int:
                self.profiles.append(profile)
                return len(self.profiles) - 1

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Any, config: Config) -> bytes | None:
                shapes = {k: v for p in config.profiles for k, v in p.shapes.items()}
                for i in range(network.num_inputs):  # TensorRT: dynamic input, no profile
                    t = network.get_input(i)
                    if any(d < 0 for d in t.shape) and t.name not in shapes:
                        return None
                trt.builds += 1
                head = json.dumps({"shapes": shapes, "flags": trt.flags}).encode()
                return MAGIC + head + b"\n" + network.onnx

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
                if not blob.startswith(MAGIC):
                    return None
                head, _, onnx = blob[len(MAGIC) :].partition(b"\n")
                return Engine(onnx, json.loads(head)["shapes"])

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    @staticmethod
    def nptype(dtype: np.dtype) -> type:
        return np.dtype(dtype).type


class CudartStandIn:
    """``cuda.cudart``: (error, value) tuples; device memory is host memory from ctypes."""

    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self) -> None:
        self.blocks: list[Any] = []

    def cudaGetDeviceProperties(self, index: int) -> tuple[int, Any]:
        return 0, SimpleNamespace(name=b"Orin (stand-in)")

    def cudaStreamCreate(self) -> tuple[int, int]:
        return 0, 1

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:
        block = ctypes.create_string_buffer(nbytes)
        self.blocks.append(block)
        return 0, ctypes.addressof(block)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: int) -> tuple[int]:
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,)
