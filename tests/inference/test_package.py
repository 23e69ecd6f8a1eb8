"""model.json parsing and package checks: valid packages load, bad ones are refused by name."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.inference.errors import DigestMismatchError, PackageError
from appliance.inference.package import expected_shape, load_package, parse_manifest
from tests.inference.fixtures import manifest, rewrite_manifest

SHA = "0" * 64
GOOD = manifest([{"path": "model.onnx", "format": "onnx", "precision": "fp32", "sha256": SHA}])
WHERE = Path("recipes/models/x/model.json")


def test_valid_package_loads_and_verifies(tiny_package: Path) -> None:
    pkg = load_package(tiny_package)
    f = pkg.select_file(("onnx",))
    assert pkg.read_verified(f)[:2]  # sha256 matched
    images, labels = pkg.load_reference()
    assert images.shape == (8, 16, 16, 3) and labels.shape == (8,)


def _with(path: str, value: object) -> bytes:
    data = json.loads(json.dumps(GOOD))
    node = data
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is KeyError:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return json.dumps(data).encode()


BAD = [
    (_with("input.shape", [1, 3, 96]), "input.shape: expected 4 dims, got 3"),
    (_with("input.shape", [1, 4, 96, 96]), "input.shape: [1, 4, 96, 96] has 4 channels"),
    (_with("input.shape", [1, 3, 0, 96]), "input.shape: every dim must be > 0"),
    (_with("input.shape", "1x3x96x96"), "input.shape: expected array, got str"),
    (_with("input.layout", "CHW"), "input.layout: invalid enum value 'CHW'"),
    (_with("input.std", [0.2, 0.0, 0.2]), "input.std: values must be non-zero"),
    (_with("input.mean", [0.4, 0.4]), "input.mean: expected 3 values, got 2"),
    (_with("format", 2), "format: invalid enum value 2"),
    (_with("task", KeyError), "(document): object missing required field task"),
    (_with("files", []), "files: at least one model file is required"),
    (_with("files.0.sha256", "abc"), "files[0].sha256: expected 64 lowercase hex digits"),
    (
        _with("files.0.path", "../../etc/passwd"),
        "files[0].path: '../../etc/passwd' must be a relative",
    ),
    (_with("files.0.path", "/abs/model.onnx"), "files[0].path"),
    (_with("files.0.format", "pt"), "files[0].format: invalid enum value 'pt'"),
    (_with("budget_ms.infer", -1), "budget_ms.infer: must be > 0"),
    (_with("reference.top1", 1.5), "reference.top1: must be in [0, 1]"),
    (_with("task", "detection"), "detection: required when task is 'detection'"),
    (b"{not json", "(document): json is malformed"),
    (b"[]", "(document): expected object, got array"),
    (b"x" * (2 << 20), "limit is"),
]


@pytest.mark.parametrize(("data", "needle"), BAD, ids=[n for _, n in BAD])
def test_malformed_manifests_are_refused_with_file_and_field(data: bytes, needle: str) -> None:
    with pytest.raises(PackageError) as exc:
        parse_manifest(data, WHERE)
    msg = str(exc.value)
    assert msg.startswith(f"{WHERE}: "), msg
    assert needle.lower() in msg.lower(), msg


def test_quantised_tflite_needs_quantization_params() -> None:
    data = json.loads(json.dumps(GOOD))
    data["files"].append(
        {"path": "m.tflite", "format": "tflite", "precision": "int8", "sha256": SHA}
    )
    with pytest.raises(PackageError, match=r"files\[1\]\.quantization: required"):
        parse_manifest(json.dumps(data).encode(), WHERE)


def test_tflite_files_default_to_nhwc_shape() -> None:
    data = json.loads(json.dumps(GOOD))
    data["files"].append(
        {"path": "m.tflite", "format": "tflite", "precision": "fp32", "sha256": SHA}
    )
    m = parse_manifest(json.dumps(data).encode(), WHERE)
    assert expected_shape(m, m.files[0]) == (1, 3, 16, 16)
    assert expected_shape(m, m.files[1]) == (1, 16, 16, 3)


def test_digest_mismatch_and_missing_file_are_named(tiny_package: Path) -> None:
    pkg = load_package(tiny_package)
    f = pkg.select_file(("onnx",))
    with (tiny_package / "model.onnx").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff")
    with pytest.raises(
        DigestMismatchError, match=r"model\.onnx: sha256 is [0-9a-f]{64}, model\.json says"
    ):
        pkg.read_verified(f)
    (tiny_package / "model.onnx").unlink()
    with pytest.raises(PackageError, match="cannot read model file"):
        pkg.read_verified(f)


def test_reference_split_count_must_match(tiny_package: Path) -> None:
    rewrite_manifest(tiny_package, reference__count=9)
    with pytest.raises(PackageError, match=r"holds 8 images; model\.json reference\.count says 9"):
        load_package(tiny_package).load_reference()


def test_missing_package_directory(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"model\.json: not found"):
        load_package(tmp_path / "nope")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    with contextlib.suppress(PackageError):
        parse_manifest(data, WHERE)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
FIELDS = ["format", "name", "task", "labels", "files", "input", "output", "budget_ms", "reference"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS), json_values)
def test_mutated_manifests_are_refused_or_valid(field: str, value: object) -> None:
    data = json.loads(json.dumps(GOOD))
    data[field] = value
    try:
        m = parse_manifest(json.dumps(data).encode(), WHERE)
    except PackageError as exc:
        assert str(exc).startswith(str(WHERE))
    else:
        assert len(m.input.shape) == 4 and m.files


# --- OpenVINO IR: an INT8 IR needs no quantization block; its .bin weights are hashed ----------

IR = {"path": "model.xml", "format": "openvino-ir", "precision": "int8", "sha256": SHA}


def _ir_manifest(**entry: object) -> bytes:
    data = json.loads(json.dumps(GOOD))
    data["files"] = [{**IR, **entry}]
    return json.dumps(data).encode()


def test_int8_ir_needs_weights_digest_but_no_quantization() -> None:
    m = parse_manifest(_ir_manifest(weights_sha256=SHA), WHERE)
    (f,) = m.files
    assert f.quantization is None and f.weights_path == "model.bin"
    named = parse_manifest(_ir_manifest(weights="w/m.bin", weights_sha256=SHA), WHERE)
    assert named.files[0].weights_path == "w/m.bin"


IR_BAD = [
    ({}, "files[0].weights_sha256: required for an openvino-ir file"),
    ({"weights_sha256": "abc"}, "files[0].weights_sha256: expected 64 lowercase hex"),
    ({"weights_sha256": SHA, "weights": "../x.bin"}, "files[0].weights: '../x.bin' must be"),
    ({"weights_sha256": SHA, "weights": "model.xml"}, "files[0].weights: must differ"),
    ({"weights_sha256": SHA, "path": "model.onnx"}, "files[0].path: 'model.onnx': an openvino-ir"),
]


@pytest.mark.parametrize(("entry", "needle"), IR_BAD, ids=[n for _, n in IR_BAD])
def test_bad_ir_entries_are_refused_by_field(entry: dict[str, object], needle: str) -> None:
    with pytest.raises(PackageError) as exc:
        parse_manifest(_ir_manifest(**entry), WHERE)
    assert str(exc.value).startswith(f"{WHERE}: ") and needle in str(exc.value)


def test_weights_fields_are_only_for_ir_files() -> None:
    with pytest.raises(PackageError, match=r"files\[0\]\.weights_sha256: only for openvino-ir"):
        parse_manifest(_with("files.0.weights_sha256", SHA), WHERE)


@pytest.fixture
def ir_package(tiny_package: Path) -> Path:
    """The tiny package with a real OpenVINO IR (converted by OpenVINO) listed first."""
    ov = pytest.importorskip("openvino")
    from tests.inference.fixtures import sha256

    model = ov.Core().read_model(str(tiny_package / "model.onnx"))
    ov.save_model(model, str(tiny_package / "model.xml"), compress_to_fp16=False)
    data = json.loads((tiny_package / "model.json").read_text())
    ir = {
        "path": "model.xml",
        "format": "openvino-ir",
        "precision": "fp32",
        "sha256": sha256((tiny_package / "model.xml").read_bytes()),
        "weights_sha256": sha256((tiny_package / "model.bin").read_bytes()),
    }
    data["files"].insert(0, ir)
    (tiny_package / "model.json").write_text(json.dumps(data))
    return tiny_package


def test_flipped_byte_in_ir_weights_is_refused(ir_package: Path) -> None:
    from appliance.inference.backends.openvino import OpenVinoBackend

    pkg = load_package(ir_package)
    f = pkg.select_file(("openvino-ir",))
    assert pkg.read_verified(f).startswith(b"<?xml")
    assert len(pkg.read_weights(f)) == (ir_package / "model.bin").stat().st_size
    loaded = OpenVinoBackend().load(pkg)  # the real back end reads the verified IR
    assert loaded.file.format == "openvino-ir"
    size = (ir_package / "model.bin").stat().st_size
    with (ir_package / "model.bin").open("r+b") as fh:
        fh.seek(size // 2)
        byte = fh.read(1)
        fh.seek(size // 2)
        fh.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(DigestMismatchError, match=r"model\.bin: sha256 is .*\(weights_sha256\)"):
        pkg.read_verified(f)
    with pytest.raises(DigestMismatchError, match=r"model\.bin"):
        OpenVinoBackend().load(pkg)
    (ir_package / "model.bin").unlink()
    with pytest.raises(PackageError, match=r"model\.bin: cannot read model file"):
        pkg.read_verified(f)
