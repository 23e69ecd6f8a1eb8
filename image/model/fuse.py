"""Fold pre-processing (and a classifier's softmax + top-k) into an ONNX model's graph.

The device's per-frame Python work is paid right after the model has evicted the caches, where
every numpy call costs several times its warm price (tools/bench_pipeline.py). A *fused* file
takes the camera frame as it is, uint8 ``[1, H, W, 3]`` in the camera's colour order, and does
the rest inside the runtime: channel order, cast, ``(p * scale - mean) / std``, NHWC -> NCHW,
and for a classifier ``Softmax`` + ``TopK``. The runtimes run these nodes for little or
nothing, and the frame goes in 4x smaller than a float tensor (measured on a 224x224
MobileNetV2, one thread, medians: onnxruntime +35 us for Transpose, Gather, Cast and
BatchNormalization, OpenVINO 150 us *faster* than the plain file on float input, against
150 us of pre- and 190 us of post-processing in numpy/OpenCV after each inference). The file
is listed in model.json with ``fused`` (appliance/inference/MODEL_PACKAGE.md); the pipeline
prefers it, the self-test checks it like any other file.

This runs on the build host (the ``onnx`` package never reaches a device). Every fused file is
checked against its source on the package's reference split before it is listed: identical
top-k classes and scores within ``SCORE_TOLERANCE`` (classification), outputs within
``OUTPUT_TOLERANCE`` (detection).

    kiln model fuse recipes/models/inspect-primary --color BGR --top-k 5
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
TOP_K_OPSET = 11  # TopK's largest/sorted attributes
COLORS = ("BGR", "RGB")  # the camera's channel order a fused file takes


class FuseError(BuildError):
    """A model cannot be fused, or its fused file disagrees with the source."""


@dataclass(frozen=True)
class FusedFile:
    """What :func:`fuse_package` wrote for one source file."""

    source: str
    path: str
    size: int
    images_checked: int
    color: str = "BGR"
    top_k: int = 0  # 0: the source's outputs kept (detection, or asked for)


def fused_name(f: ModelFile) -> str:
    stem = f.path[: -len(".onnx")] if f.path.endswith(".onnx") else f.path
    return f"{stem}.fused.onnx"


def fuse_onnx(data: bytes, m: Manifest, f: ModelFile, color: str, top_k: int) -> bytes:
    """The fused graph of ONNX bytes ``data`` (file ``f`` of a package with manifest ``m``)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(data)
    g = model.graph
    initialisers = {i.name for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in initialisers]
    if len(real_inputs) != 1:
        raise FuseError(
            f"{f.path}: fusing needs exactly one input, the model has {len(real_inputs)}"
        )
    # The names this module gives the fused file's input and outputs may already be taken (a
    # classifier whose output is "scores"): such tensors are renamed inside the graph.
    for taken in (FRAME, "scores", "indices") if top_k else (FRAME,):
        _rename(g, taken, PREFIX + "source_" + taken)
    source_in = real_inputs[0].name
    if real_inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise FuseError(
            f"{f.path}: input {source_in!r} is not float32; only a float model can take the "
            "normalised frame (fuse the FP32 or QDQ ONNX file)"
        )
    layout = f.layout or m.input.layout
    s = m.input.shape
    h, w = (s[2], s[3]) if m.input.layout == "NCHW" else (s[1], s[2])
    std = np.asarray(m.input.std, np.float64)
    a = (m.input.scale / std).astype(np.float32)
    b = (-np.asarray(m.input.mean, np.float64) / std).astype(np.float32)
    nodes, inits = _pre_nodes(layout, color != m.input.color, a, b, source_in)
    keep = [i for i in g.input if i.name != source_in]
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info(FRAME, TensorProto.UINT8, [1, h, w, 3]), *keep])
    for node in reversed(nodes):
        g.node.insert(0, node)
    g.initializer.extend(inits)
    if top_k:
        _fold_top_k(g, model.opset_import, m, f, top_k)
    model.producer_name, model.producer_version = "edgekiln model fuse", "1"
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise FuseError(f"{f.path}: the fused graph is not valid ONNX: {exc}") from None
    return bytes(model.SerializeToString())


def _pre_nodes(
    layout: str, reverse: bool, a: np.ndarray, b: np.ndarray, out: str
) -> tuple[list[Any], list[Any]]:
    """(nodes, initialisers) from the uint8 NHWC ``frame`` to the float input ``out``.

    ``reverse``: the camera's colour order differs from the model's.
    """
    from onnx import TensorProto, helper, numpy_helper

    def name(n: str) -> str:
        return PREFIX + n

    nodes = []
    x = FRAME
    if layout == "NCHW":  # x * a + b per channel as one BatchNormalization (mean 0, var 1)
        inits = [
            numpy_helper.from_array(a, name("a")),
            numpy_helper.from_array(b, name("b")),
            numpy_helper.from_array(np.zeros(3, np.float32), name("zero")),
            numpy_helper.from_array(np.ones(3, np.float32), name("one")),
        ]
    else:
        inits = [
            numpy_helper.from_array(a.reshape(1, 1, 1, 3), name("a")),
            numpy_helper.from_array(b.reshape(1, 1, 1, 3), name("b")),
        ]
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
    nodes.append(helper.make_node("Cast", [x], [name("float")], to=TensorProto.FLOAT))
    if layout == "NCHW":
        # One pass instead of two: on a 224x224 MobileNetV2, onnxruntime spends +35 us on
        # Cast + BatchNormalization against +100 us on Cast + Mul + Add (OpenVINO: the same).
        bn_inputs = [name("float"), name("a"), name("b"), name("zero"), name("one")]
        nodes.append(helper.make_node("BatchNormalization", bn_inputs, [out], epsilon=0.0))
    else:
        nodes += [
            helper.make_node("Mul", [name("float"), name("a")], [name("scaled")]),
            helper.make_node("Add", [name("scaled"), name("b")], [out]),
        ]
    return nodes, inits


def _rename(g: Any, old: str, new: str) -> None:
    """Rename tensor ``old`` everywhere in graph ``g`` (not in subgraphs: none use these)."""
    for node in g.node:
        for names in (node.input, node.output):
            for i, n in enumerate(names):
                if n == old:
                    names[i] = new
    for values in (g.input, g.output, g.value_info, g.initializer):
        for v in values:
            if v.name == old:
                v.name = new


def _fold_top_k(g: Any, opsets: Any, m: Manifest, f: ModelFile, top_k: int) -> None:
    """Replace a classifier's output by (scores [1, K], indices [1, K]), best first."""
    from onnx import TensorProto, helper, numpy_helper

    if m.task != "classification" or len(g.output) != 1:
        raise FuseError(
            f"{f.path}: top-k fusing needs a classifier with exactly one output, this "
            f"{m.task} model has {len(g.output)}; fuse with top_k 0 (pre-processing only)"
        )
    opset = next((o.version for o in opsets if o.domain in ("", "ai.onnx")), 0)
    if opset < TOP_K_OPSET:
        raise FuseError(
            f"{f.path}: opset {opset}: a top-k in the graph needs opset >= {TOP_K_OPSET}; "
            "re-export the model or fuse with top_k 0 (pre-processing only)"
        )
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
    root: Path,
    color: str = "BGR",
    top_k: int = DEFAULT_TOP_K,
    check: int = 64,
    files: Sequence[str] | None = None,
    backends: Sequence[str] = ("onnxruntime",),
) -> list[FusedFile]:
    """Add a fused file for every plain ONNX file of the package at ``root``, checked, listed.

    ``files`` limits it to those plain ONNX files (the build fuses only the one its runtime
    picks). Earlier fused files of the same sources are replaced. ``check``: reference images
    compared on each of ``backends`` (0: none; the whole split when it is smaller; the build
    adds the target's runtime to onnxruntime). Every graph is made in memory
    first; then the fused files and model.json are written (each atomically) and the package is
    loaded and checked; any failure puts the old model.json and fused files back.
    """
    if color not in COLORS:
        raise FuseError(f"color {color!r}: choose one of {', '.join(COLORS)}")
    if top_k < 0 or check < 0:
        raise FuseError(f"top_k ({top_k}) and check ({check}) must be >= 0")
    package = load_package(root)
    m = package.manifest
    k = top_k if m.task == "classification" else 0
    if k and m.labels:  # a graph cannot rank more classes than it has
        k = min(k, len(m.labels))
    plain = _sources(package, files)
    made = {f.path: fuse_onnx(package.read_verified(f), m, f, color, k) for f in plain}
    original = package.manifest_path.read_bytes()
    data = json.loads(original)
    replaced = [e for e in data["files"] if (e.get("fused") or {}).get("of") in made]
    earlier = {  # put back if this run fails
        e["path"]: (root / e["path"]).read_bytes() for e in replaced if (root / e["path"]).is_file()
    }
    entries = [e for e in data["files"] if e not in replaced]
    written: list[FusedFile] = []
    try:
        for f in plain:
            fused, path = made[f.path], fused_name(f)
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
            written.append(FusedFile(f.path, path, len(fused), 0, color, k))
            index = next(i for i, e in enumerate(entries) if e["path"] == f.path)
            entries.insert(index + 1, entry)
        data["files"] = entries
        atomic_write_bytes(package.manifest_path, (json.dumps(data, indent=2) + "\n").encode())
        checked = load_package(root)  # the new model.json passes the device's own validation
        if check:
            for backend in backends:
                written = [
                    replace(
                        w, images_checked=check_fused(checked, w.source, w.path, check, backend)
                    )
                    for w in written
                ]
    except BaseException:  # a failed check (or an interrupt) leaves the package as it was
        atomic_write_bytes(package.manifest_path, original)
        for w in written:
            (root / w.path).unlink(missing_ok=True)
        for path, old in earlier.items():
            atomic_write_bytes(root / path, old)
        raise
    for path in set(earlier) - {w.path for w in written}:  # renamed by hand: now unlisted
        (root / path).unlink(missing_ok=True)
    return written


def _sources(package: ModelPackage, files: Sequence[str] | None) -> list[ModelFile]:
    """The plain ONNX files to fuse: all, or those named by ``files``."""
    plain = [f for f in package.manifest.files if f.format == "onnx" and f.fused is None]
    if files is not None:
        unknown = sorted(set(files) - {f.path for f in plain})
        if unknown:
            raise FuseError(
                f"{package.manifest_path}: files: {unknown} are not plain onnx files of the "
                f"package (it has {[f.path for f in plain]})"
            )
        plain = [f for f in plain if f.path in files]
    if not plain:
        have = sorted({f.format for f in package.manifest.files})
        raise FuseError(
            f"{package.manifest_path}: files: no plain onnx file to fuse (the package has "
            f"{have}); fusing needs the model as ONNX: add it or do not fuse this package"
        )
    return plain


def check_fused(
    package: ModelPackage, source: str, fused: str, count: int, backend: str = "onnxruntime"
) -> int:
    """Run source and fused file on reference images on ``backend``; raise if they differ.

    Classification: the same top-k classes (k: the fused file's, else 5) with scores within
    ``SCORE_TOLERANCE``; detection: every output within ``OUTPUT_TOLERANCE``. Returns the number
    of images compared (0 when the package has no reference split).
    """
    from appliance.inference.backends import get_backend
    from appliance.inference.postprocess import Postprocessor
    from appliance.inference.preprocess import Preprocessor

    if package.manifest.reference is None:
        return 0
    images, _labels = package.load_reference()
    runtime = get_backend(backend)
    plain, joined = runtime.load(package, source), runtime.load(package, fused)
    try:
        spec = joined.file.fused
        top = spec.top_k if spec is not None and spec.top_k else DEFAULT_TOP_K
        pre_p, post_p = Preprocessor.for_model(plain), Postprocessor(plain, top)
        pre_f, post_f = Preprocessor.for_model(joined), Postprocessor(joined, top)
        color = spec.color if spec is not None else "RGB"
        n = min(count, len(images))
        for i in range(n):
            rgb = images[i]
            frame = rgb[..., ::-1] if color == "BGR" else rgb
            want = plain.run(pre_p(rgb, "RGB")[0])
            got = joined.run(pre_f(np.ascontiguousarray(frame), color)[0])
            _compare(f"{package.root / fused} on {backend}", package, i, want, got, post_p, post_f)
    finally:
        plain.close()
        joined.close()
    return n


def same_up_to_ties(a: list[dict[str, Any]], b: list[dict[str, Any]], tol: float) -> bool:
    """The same ranking, where classes whose scores tie (within ``tol``) may come in any order.

    An INT8 model's scores take few distinct values, so ties are common; the fused graph's TopK
    breaks them to the lower index, numpy's sort of the plain file's scores may not. Position
    ``j`` may name another class only if that class ties with ``a[j]`` in ``a``, or the tie
    reaches the end of the list (the other class tied just below the cut).
    """
    for x, y in zip(a, b, strict=True):
        if x["index"] == y["index"]:
            continue
        tied = {t["index"] for t in a if abs(t["score"] - x["score"]) <= tol}
        if y["index"] in tied or abs(a[-1]["score"] - x["score"]) <= tol:
            continue
        return False
    return True


def _compare(
    what: str, package: ModelPackage, i: int, want: list[Any], got: list[Any], pp: Any, pf: Any
) -> None:
    where = f"{what}: reference image {i}"
    if package.manifest.task == "classification":
        a, b = pp(want)["top"], pf(got)["top"]
        if any(abs(x["score"] - y["score"]) > SCORE_TOLERANCE for x, y in zip(a, b, strict=True)):
            raise FuseError(f"{where}: scores {b} differ from the source's {a}")
        if not same_up_to_ties(a, b, SCORE_TOLERANCE):
            raise FuseError(f"{where}: top classes {b} differ from the source's {a}")
        return
    if len(want) != len(got):
        raise FuseError(f"{where}: {len(got)} outputs, the source has {len(want)}")
    for j, (x, y) in enumerate(zip(want, got, strict=True)):
        diff = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        if diff > OUTPUT_TOLERANCE:
            raise FuseError(f"{where}: output {j} differs from the source's by {diff:.2e}")
