"""The rows of ``kiln model optimise``: each variant measured, or marked failed with the reason.

A variant that cannot be built (NNCF failed) or loaded on the target runtime (e.g. OpenVINO's
CPU plugin refusing one INT8 form on one CPU: ``No suitable implementations``) becomes a row with
``error`` set and ``passed`` false; the run goes on and selects among the rest. A variant that
runs on the target's runtime but not on another back end its frozen runtime carries (OpenCV 5,
bundled by ``[runtime] extras = ["opencv"]``, cannot load ONNX Runtime's QDQ files) is shipped
with the FP32 parent as a second file, which that back end loads instead
(appliance/inference/chain.py tries the package's next file). A runtime without such a back end
gets no file only it would read (image/model/stage.py passes the recipe's back ends).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from appliance.inference.backends import get_backend
from appliance.inference.errors import BackendUnavailableError, InferenceError
from appliance.inference.package import ModelPackage, load_package
from image.model.eval import Evaluation, EvaluationError, evaluate
from image.model.quantise import QuantisationError, quantise_onnx_int8
from image.model.table import Variant

# QDQ with uint8 activations and 7-bit weights (``reduce_range``): a u8 x s7 pair sum fits
# int16, so CPUs without VNNI give the same answer as those with it (docs/decisions.md §30).
INT8_U8S7_ONNX = "model_int8_u8s7.onnx"


def measured(ev: Evaluation, name: str, precision: str, hint: str, parent_top1: float) -> Variant:
    """A row from an evaluation; ``drop_pp`` is against the FP32 parent on the same runtime."""
    return Variant(
        name=name,
        file=ev.file,
        precision=precision,
        hint=hint,
        top1=ev.top1,
        drop_pp=(parent_top1 - ev.top1) * 100,
        p50_ms=ev.p50_ms,
        p95_ms=ev.p95_ms,
        size_bytes=ev.size_bytes,
        device=ev.device,
    )


def failed(name: str, file: str, precision: str, hint: str, reason: str) -> Variant:
    """A row for a variant that could not be built or loaded: never passes, says why."""
    return Variant(name, file, precision, hint, drop_pp=100.0, error=reason)


class Scratch:
    """A scratch package whose model.json lists every variant built so far."""

    def __init__(
        self, parent: ModelPackage, root: Path, runtime: str, threads: int, rounds: int
    ) -> None:
        shutil.copytree(parent.root, root)
        self.parent, self.root, self.runtime = parent, root, runtime
        self.threads, self.rounds = threads, rounds
        self.entries: list[dict[str, Any]] = []
        self.images, self.labels = parent.load_reference()
        self.package = parent

    def add(self, path: str, precision: str) -> None:
        self.entries.append(entry(self.root, path, precision))
        write_manifest(self.root, self.parent, self.entries)
        self.package = load_package(self.root)

    def run(self, file: str, f32: bool, runtime: str | None = None, first: int = 0) -> Evaluation:
        images, labels = self.images, self.labels
        if first:
            images, labels = images[:first], labels[:first]
        return evaluate(
            self.package,
            runtime or self.runtime,
            file=file,
            threads=self.threads,
            precision_f32=f32,
            images=images,
            labels=labels,
            timing_rounds=1 if first else self.rounds,
        )

    def row(self, name: str, file: str, precision: str, hint: str, parent_top1: float) -> Variant:
        """Measure ``file``; a load or run failure on the runtime becomes a failed row."""
        try:
            ev = self.run(file, hint != "default")
        except EvaluationError as exc:
            return failed(name, file, precision, hint, f"on {self.runtime}: {exc}")
        return measured(ev, name, precision, hint, parent_top1)

    def fallback_failures(self, file: str, runtimes: tuple[str, ...]) -> dict[str, str]:
        """Why each of ``runtimes`` that reads this file's format cannot load and run it."""
        out: dict[str, str] = {}
        fmt = "openvino-ir" if file.endswith(".xml") else "onnx"
        for rt in runtimes:
            try:
                if fmt not in get_backend(rt).formats:
                    out[rt] = f"{rt} does not read {fmt} files"
                    continue
                self.run(file, True, runtime=rt, first=1)
            except BackendUnavailableError:
                continue  # not on this build host: nothing to check it with
            except (EvaluationError, InferenceError) as exc:
                out[rt] = str(exc).strip()
        return out


def entry(root: Path, path: str, precision: str, top1: float | None = None) -> dict[str, Any]:
    """A model.json ``files`` entry for ``root/path`` (an IR's .bin digest included)."""
    e: dict[str, Any] = {
        "path": path,
        "format": "openvino-ir" if path.endswith(".xml") else "onnx",
        "precision": precision,
        "sha256": hashlib.sha256((root / path).read_bytes()).hexdigest(),
    }
    if e["format"] == "openvino-ir":
        # The .xml is only the graph; every weight is in the .bin beside it (same stem).
        weights = root / (path[: -len(".xml")] + ".bin")
        e["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    if top1 is not None:
        e["top1"] = round(top1, 6)
    return e


def write_manifest(
    root: Path,
    parent: ModelPackage,
    files: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> None:
    """model.json of ``parent`` with a new files list (every other field kept as it was)."""
    data = json.loads(parent.manifest_path.read_text())
    data["files"] = files
    if extra:
        data.setdefault("provenance", {}).update(extra)
    (root / "model.json").write_text(json.dumps(data, indent=2) + "\n")


def pin_splits(root: Path) -> None:
    """Record each split's sha256 in model.json: the device's self-test reads only that file."""
    path = root / "model.json"
    data = json.loads(path.read_text())
    for key in ("reference", "calibration"):
        if isinstance(data.get(key), dict) and (root / data[key]["split"]).is_file():
            digest = hashlib.sha256((root / data[key]["split"]).read_bytes()).hexdigest()
            data[key]["sha256"] = digest
    path.write_text(json.dumps(data, indent=2) + "\n")


def int8_u8s7_row(sc: Scratch, fp32: str, calibration: Path | None, parent_top1: float) -> Variant:
    """Build the 7-bit QDQ file into ``sc`` and measure it (a failed row if it cannot be built)."""
    try:
        quantise_onnx_int8(
            sc.parent,
            sc.root / INT8_U8S7_ONNX,
            source=fp32,
            calibration=calibration,
            unsigned_activations=True,
            reduce_range=True,
        )
    except QuantisationError as exc:
        return failed("int8-u8s7", INT8_U8S7_ONNX, "int8", "f32", f"not built: {exc}")
    sc.add(INT8_U8S7_ONNX, "int8")
    return sc.row("int8-u8s7", INT8_U8S7_ONNX, "int8", "f32", parent_top1)
