"""Fold pre-processing (and a classifier's softmax + top-k) into an ONNX model's graph.

The device's per-frame Python work is paid right after the model has evicted the caches, where
every numpy call costs several times its warm price (tools/bench_pipeline.py). A *fused* file
takes the camera frame as it is, uint8 ``[1, H, W, 3]`` in the camera's colour order, and does
the rest inside the runtime: channel order, cast, ``(p * scale - mean) / std``, NHWC -> NCHW,
and for a classifier ``Softmax`` + ``TopK``. The runtimes run these nodes almost for free
(measured: +0-60 us on a 7 ms MobileNetV2 on onnxruntime, nothing on OpenVINO, against
120-150 us for the same work in numpy/OpenCV), and the frame goes in 4x smaller than a float
tensor. The file is listed in model.json with ``fused`` (appliance/inference/MODEL_PACKAGE.md);
the pipeline prefers it, the self-test checks it like any other file.

This runs on the build host (the ``onnx`` package never reaches a device). Every fused file is
checked against its source on the package's reference split before it is listed: identical
top-k classes and scores within ``SCORE_TOLERANCE`` (classification), outputs within
``OUTPUT_TOLERANCE`` (detection).

    kiln model fuse recipes/models/inspect-primary --color BGR --top-k 5
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.fsutil import atomic_write_bytes
from appliance.inference.package import Manifest, ModelFile, ModelPackage, load_package
from image.errors import BuildError

PREFIX = "edgekiln_fuse/"  # names of every tensor and initialiser this module adds
FRAME = "frame"  # the fused file's input
SCORE_TOLERANCE = 1e-4
OUTPUT_TOLERANCE = 1e-3
DEFAULT_TOP_K = 5


class FuseError(BuildError):
    """A model cannot be fused, or its fused file disagrees with the source."""


@dataclass(frozen=True)
class FusedFile:
    """What :func:`fuse_package` wrote for one source file."""

    source: str
    path: str
    size: int
    images_checked: int


def fused_name(f: ModelFile) -> str:
    stem = f.path[: -len(".onnx")] if f.path.endswith(".onnx") else f.path
    return f"{stem}.fused.onnx"


def fuse_onnx(data: bytes, m: Manifest, f: ModelFile, color: str, top_k: int) -> bytes:
    """The fused graph of ONNX bytes ``data`` (file ``f`` of a package with manifest ``m``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(data)
    g = model.graph
    initialisers = {i.name for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in initialisers]
    if len(real_inputs) != 1:
        raise FuseError(
            f"{f.path}: fusing needs exactly one input, the model has {len(real_inputs)}"
        )
    source_in = real_inputs[0].name
    layout = f.layout or m.input.layout
    s = m.input.shape
    h, w = (s[2], s[3]) if m.input.layout == "NCHW" else (s[1], s[2])
    std = np.asarray(m.input.std, np.float64)
    a = (m.input.scale / std).astype(np.float32)
    b = (-np.asarray(m.input.mean, np.float64) / std).astype(np.float32)
    const_shape = (1, 3, 1, 1) if layout == "NCHW" else (1, 1, 1, 3)

    def name(n: str) -> str:
        return PREFIX + n

    nodes = []
    x = FRAME
    inits = [
        numpy_helper.from_array(a.reshape(const_shape), name("a")),
        numpy_helper.from_array(b.reshape(const_shape), name("b")),
    ]
    reverse = color != m.input.color  # the camera's colour order differs from the model's
    if layout == "NCHW" or reverse:  # transpose the uint8 pixels: a quarter of float32's bytes
        nodes.append(helper.make_node("Transpose", [x], [name("nchw")], perm=[0, 3, 1, 2]))
        x = name("nchw")
    if reverse:
        # Reversed as three planes (block copies): on interleaved pixels onnxruntime gathers
        # element by element, +0.2 ms at 96x96.
        inits.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), name("reverse")))
        nodes.append(helper.make_node("Gather", [x, name("reverse")], [name("ordered")], axis=1))
        x = name("ordered")
        if layout == "NHWC":
            nodes.append(helper.make_node("Transpose", [x], [name("nhwc")], perm=[0, 2, 3, 1]))
            x = name("nhwc")
    nodes += [
        helper.make_node("Cast", [x], [name("float")], to=TensorProto.FLOAT),
        helper.make_node("Mul", [name("float"), name("a")], [name("scaled")]),
        helper.make_node("Add", [name("scaled"), name("b")], [source_in]),
    ]
    keep = [i for i in g.input if i.name != source_in]
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info(FRAME, TensorProto.UINT8, [1, h, w, 3]), *keep])
    for node in reversed(nodes):
        g.node.insert(0, node)
    g.initializer.extend(inits)
    if top_k:
        _fold_top_k(g, m, top_k)
    model.producer_name, model.producer_version = "edgekiln model fuse", "1"
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise FuseError(f"{f.path}: the fused graph is not valid ONNX: {exc}") from None
    return bytes(model.SerializeToString())


def _fold_top_k(g: Any, m: Manifest, top_k: int) -> None:
    """Replace a classifier's output by (scores [1, K], indices [1, K]), best first."""
    from onnx import TensorProto, helper, numpy_helper

    if m.task != "classification" or len(g.output) != 1:
        raise FuseError("top-k fusing needs a classifier with exactly one output")
    k = min(top_k, len(m.labels)) if m.labels else top_k
    out = g.output[0].name
    nodes = [helper.make_node("Flatten", [out], [PREFIX + "flat"], axis=1)]
    scores = PREFIX + "flat"
    if m.output.kind == "logits":
        nodes.append(helper.make_node("Softmax", [scores], [PREFIX + "probs"], axis=-1))
        scores = PREFIX + "probs"
    nodes.append(
        helper.make_node(
            "TopK", [scores, PREFIX + "k"], ["scores", "indices"], axis=-1, largest=1, sorted=1
        )
    )
    g.node.extend(nodes)
    g.initializer.append(numpy_helper.from_array(np.array([k], np.int64), PREFIX + "k"))
    del g.output[:]
    g.output.extend(
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, k]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, [1, k]),
        ]
    )


def fuse_package(
    root: Path, color: str = "BGR", top_k: int = DEFAULT_TOP_K, check: int = 64
) -> list[FusedFile]:
    """Add a fused file for every plain ONNX file of the package at ``root``, checked, listed.

    Earlier fused files are replaced. ``check``: reference images compared (0: none; the whole
    split when it is smaller). model.json is replaced atomically once every fused file is
    written; a failed check puts the old model.json and fused files back.
    """
    package = load_package(root)
    m = package.manifest
    k = top_k if m.task == "classification" else 0
    plain = [f for f in m.files if f.format == "onnx" and f.fused is None]
    if not plain:
        raise FuseError(f"{package.manifest_path}: files: no onnx file to fuse")
    data = json.loads(package.manifest_path.read_bytes())
    entries = [e for e in data["files"] if not e.get("fused")]
    earlier = {  # put back if this run fails
        e["path"]: (root / e["path"]).read_bytes()
        for e in data["files"]
        if e.get("fused") and (root / e["path"]).is_file()
    }
    written = []
    for f in plain:
        fused = fuse_onnx(package.read_verified(f), m, f, color, k)
        path = fused_name(f)
        atomic_write_bytes(root / path, fused)
        entry: dict[str, Any] = {
            "path": path,
            "format": "onnx",
            "precision": f.precision,
            "sha256": hashlib.sha256(fused).hexdigest(),
            "layout": "NHWC",
            "fused": {"of": f.path, "color": color, "top_k": k},
        }
        if f.top1 is not None:
            entry["top1"] = f.top1
        index = next(i for i, e in enumerate(entries) if e["path"] == f.path)
        entries.insert(index + 1, entry)
        written.append(FusedFile(f.path, path, len(fused), 0))
    data["files"] = entries
    original = package.manifest_path.read_bytes()
    atomic_write_bytes(package.manifest_path, (json.dumps(data, indent=2) + "\n").encode())
    try:
        if check:
            checked = load_package(root)
            written = [
                FusedFile(w.source, w.path, w.size, check_fused(checked, w.source, w.path, check))
                for w in written
            ]
    except BaseException:  # a failed check (or an interrupt) leaves the package as it was
        atomic_write_bytes(package.manifest_path, original)
        for w in written:
            (root / w.path).unlink(missing_ok=True)
        for path, old in earlier.items():
            atomic_write_bytes(root / path, old)
        raise
    return written


def check_fused(package: ModelPackage, source: str, fused: str, count: int) -> int:
    """Run source and fused file on reference images through onnxruntime; raise if they differ."""
    from appliance.inference.backends import get_backend
    from appliance.inference.postprocess import Postprocessor
    from appliance.inference.preprocess import Preprocessor

    if package.manifest.reference is None:
        return 0
    images, _labels = package.load_reference()
    backend = get_backend("onnxruntime")
    plain, joined = backend.load(package, source), backend.load(package, fused)
    try:
        pre_p, post_p = Preprocessor.for_model(plain), Postprocessor(plain, 5)
        pre_f, post_f = Preprocessor.for_model(joined), Postprocessor(joined, 5)
        color = joined.file.fused.color if joined.file.fused else "RGB"
        n = min(count, len(images))
        for i in range(n):
            rgb = images[i]
            frame = rgb[..., ::-1] if color == "BGR" else rgb
            want = plain.run(pre_p(rgb, "RGB")[0])
            got = joined.run(pre_f(np.ascontiguousarray(frame), color)[0])
            _compare(package, fused, i, want, got, post_p, post_f)
    finally:
        plain.close()
        joined.close()
    return n


def _compare(
    package: ModelPackage, fused: str, i: int, want: list[Any], got: list[Any], pp: Any, pf: Any
) -> None:
    where = f"{package.root / fused}: reference image {i}"
    if package.manifest.task == "classification":
        a, b = pp(want)["top"], pf(got)["top"]
        if [t["index"] for t in a] != [t["index"] for t in b]:
            raise FuseError(f"{where}: top classes {b} differ from the source's {a}")
        if any(abs(x["score"] - y["score"]) > SCORE_TOLERANCE for x, y in zip(a, b, strict=True)):
            raise FuseError(f"{where}: scores {b} differ from the source's {a}")
        return
    for j, (x, y) in enumerate(zip(want, got, strict=True)):
        diff = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        if diff > OUTPUT_TOLERANCE:
            raise FuseError(f"{where}: output {j} differs from the source's by {diff:.2e}")
