"""Make (or check) the reference model packages recipes/models/inspect-{primary,fallback}.

Generate everything (needs the torch venv; on 2 busy shared cores about 25-30 minutes:
rendering 16k training images 4-7 min, both models training in parallel ~20 min):

    /work/venv-torch/bin/python tools/make_reference_model.py [--tflite]

Add TFLite files (FP32 + full INT8) to the committed packages without retraining. The TFLite
models are rebuilt in Keras from the committed ONNX and converted in /work/venv-tf
(pip install tensorflow-cpu); their top-1 is measured with LiteRT (pip install ai-edge-litert
into the torch venv too):

    /work/venv-torch/bin/python tools/make_reference_model.py --tflite-only

Check the committed packages (repo .venv, no torch): digests, and every recorded top-1 and the
prediction histogram re-measured with onnxruntime / LiteRT:

    .venv/bin/python tools/make_reference_model.py --check

The data set is synthetic (tools/refmodel/dataset.py), rendered from a fixed seed. Training is
seeded and uses deterministic algorithms on one thread per model, so a rerun should give the
same weights (not yet verified across two full runs); ``budget_ms`` and
``provenance.host_latency_ms`` come from the latency measured on the machine that ran it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from refmodel import dataset, pack

log = logging.getLogger("make_reference_model")

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "recipes" / "models"
TF_PYTHON = Path("/work/venv-tf/bin/python")
SEED = 1234
COUNTS = {"train": 16000, "val": 512, "reference": 256, "calibration": 32}
MIN_TOP1 = {"inspect-primary": 0.95, "inspect-fallback": 0.80}


# --- data ---------------------------------------------------------------------------------------


def _render_chunk(job: tuple[int, str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, split, start, count = job
    return dataset.make_split(seed, split, count, start)


def load_split(split: str, count: int, seed: int, cache: Path, jobs: int) -> tuple[Any, Any]:
    """Render a split (in ``jobs`` processes), cached by generator source, seed and count."""
    source = (Path(dataset.__file__).read_bytes(), seed, split, count)
    key = hashlib.sha256(repr(source).encode()).hexdigest()[:16]
    path = cache / f"{split}-{count}-{key}.npz"
    if path.exists():
        return pack.read_npz(path)
    started = time.monotonic()
    chunk = 250
    work = [(seed, split, s, min(chunk, count - s)) for s in range(0, count, chunk)]
    with ProcessPoolExecutor(jobs) as pool:
        parts = list(pool.map(_render_chunk, work))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    pack.write_npz(partial, images=images, labels=labels)
    partial.replace(path)  # a concurrent reader sees the whole file or none
    log.info("rendered %s: %d images in %.0f s", split, count, time.monotonic() - started)
    return images, labels


# --- generate -----------------------------------------------------------------------------------


def _train_one(job: tuple[str, argparse.Namespace]) -> dict[str, float]:
    """Train one architecture (in a worker process) and export it to <out>/<name>/model.onnx."""
    import torch
    from refmodel import train

    name, args = job
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    arch = {a.name: a for a in (train.PRIMARY, train.FALLBACK)}[name]
    splits = {s: load_split(s, COUNTS[s], args.seed, args.cache, 1) for s in ("train", "val")}
    folded, figures = train.train(
        arch, *splits["train"], *splits["val"], seed=args.seed, classes=len(dataset.LABELS)
    )
    train.export_onnx(folded, args.out / name / "model.onnx")
    return figures


def generate(args: argparse.Namespace) -> None:
    """Render the data, train both models, write both packages (and TFLite files if asked)."""
    import cv2
    import onnxruntime
    import torch
    from refmodel import train

    splits = {s: load_split(s, n, args.seed, args.cache, args.jobs) for s, n in COUNTS.items()}
    archs = (train.PRIMARY, train.FALLBACK)
    for arch in archs:
        shutil.rmtree(args.out / arch.name, ignore_errors=True)
        (args.out / arch.name).mkdir(parents=True)
    # Both models train at once, one process (one torch thread) each: on shared cores two
    # single-threaded processes got through more work than one two-threaded one.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(archs), mp_context=spawn) as pool:
        trained = list(pool.map(_train_one, [(arch.name, args) for arch in archs]))
    summary = []
    failures: list[str] = []
    for arch, figures in zip(archs, trained, strict=True):
        root = args.out / arch.name
        onnx_path = root / "model.onnx"
        images, labels = splits["reference"]
        predictions = pack.onnx_predict(onnx_path, images)
        top1 = pack.top1(predictions, labels)
        confusion = np.zeros((len(dataset.LABELS),) * 2, dtype=int)
        np.add.at(confusion, (labels, predictions), 1)
        log.info(
            "%s reference confusion (rows: truth %s):\n%s", arch.name, dataset.LABELS, confusion
        )
        if top1 < MIN_TOP1[arch.name]:
            failures.append(f"{arch.name}: top-1 {top1:.4f} is below {MIN_TOP1[arch.name]}")
        p50, p95 = pack.onnx_latency(onnx_path, images)
        pack.write_npz(root / "reference.npz", images=images, labels=labels)
        pack.write_npz(
            root / "calibration.npz",
            images=splits["calibration"][0],
            labels=splits["calibration"][1],
        )
        files = [
            {
                "path": "model.onnx",
                "format": "onnx",
                "precision": "fp32",
                "sha256": pack.sha256_file(onnx_path),
                "top1": top1,
            }
        ]
        provenance = {
            "tool": "tools/make_reference_model.py",
            "seed": args.seed,
            "dataset": dataset.DATASET_ID,
            "architecture": arch.description,
            "params": figures["params"],
            "train_images": COUNTS["train"],
            "epochs": arch.epochs,
            "val_top1": round(figures["val_top1"], 6),
            "versions": {
                "torch": torch.__version__.split("+")[0],
                "onnxruntime": onnxruntime.__version__,
                "opencv": cv2.__version__,
                "numpy": np.__version__,
            },
            "host_latency_ms": {"p50": round(p50, 3), "p95": round(p95, 3), "threads": 1},
        }
        reference = {
            "split": "reference.npz",
            "count": len(images),
            "top1": top1,
            "histogram": pack.histogram(predictions, dataset.LABELS),
        }
        document = pack.manifest(
            arch.name,
            dataset.LABELS,
            files,
            pack.budget(p95),
            reference,
            COUNTS["calibration"],
            provenance,
        )
        pack.write_json(root / "model.json", document)
        summary.append((arch.name, top1, figures, p50, p95, onnx_path.stat().st_size))
    for name, top1, figures, p50, p95, size in summary:
        log.info(
            "%s: top1 %.4f, %d params, %d bytes, trained in %.0f s, ORT p50 %.3f p95 %.3f ms",
            name,
            top1,
            figures["params"],
            size,
            figures["train_seconds"],
            p50,
            p95,
        )
    if failures:
        # The packages stay written for inspection, but the run fails: do not commit them.
        raise SystemExit("; ".join(failures) + "; change the data or training in tools/refmodel")
    if args.tflite:
        add_tflite(args.out)


# --- TFLite -------------------------------------------------------------------------------------


def add_tflite(out: Path) -> None:
    """Convert each package's ONNX to FP32 and INT8 TFLite (in the TF venv); list them."""
    from refmodel import onnx_layers
    from refmodel.check import tflite_predict

    if not TF_PYTHON.exists():
        raise SystemExit(
            f"{TF_PYTHON} not found: python3 -m venv /work/venv-tf && "
            "/work/venv-tf/bin/pip install tensorflow-cpu"
        )
    for name in MIN_TOP1:
        root = out / name
        document = json.loads((root / "model.json").read_text(encoding="utf-8"))
        images, labels = pack.read_npz(root / "reference.npz")
        calibration, _ = pack.read_npz(root / "calibration.npz")
        with tempfile.TemporaryDirectory(prefix="refmodel-tflite-") as tmp:
            work = Path(tmp)
            layers, weights = onnx_layers.read_layers(root / "model.onnx")
            (work / "layers.json").write_text(json.dumps(layers))
            np.savez(work / "weights.npz", allow_pickle=False, **weights)
            nhwc = pack.normalise_nchw(images).transpose(0, 2, 3, 1)
            np.save(work / "reference.npy", np.ascontiguousarray(nhwc))
            np.save(
                work / "calibration.npy",
                np.ascontiguousarray(pack.normalise_nchw(calibration).transpose(0, 2, 3, 1)),
            )
            session = pack.onnx_session(root / "model.onnx")
            x = pack.normalise_nchw(images)
            logits = np.concatenate(
                [session.run(["logits"], {"input": x[k : k + 1]})[0] for k in range(len(x))]
            )
            np.save(work / "reference_logits.npy", logits)
            script = Path(__file__).resolve().parent / "refmodel" / "tflite_convert.py"
            run = subprocess.run(
                [str(TF_PYTHON), str(script), str(work)],
                capture_output=True,
                text=True,
                check=False,
            )
            if run.returncode != 0:
                raise SystemExit(f"{name}: TFLite conversion failed:\n{run.stderr[-3000:]}")
            result = json.loads((work / "result.json").read_text())
            files = [f for f in document["files"] if f["format"] != "tflite"]
            for file_name, precision in (("model.tflite", "fp32"), ("model_int8.tflite", "int8")):
                shutil.copyfile(work / file_name, root / file_name)
                info = result[file_name]
                entry: dict[str, Any] = {
                    "path": file_name,
                    "format": "tflite",
                    "precision": precision,
                    "layout": "NHWC",
                    "sha256": pack.sha256_file(root / file_name),
                }
                if info["quantization"]:
                    entry["quantization"] = info["quantization"]
                # top-1 as the device measures it: LiteRT, with --check's own input quantisation.
                predictions = tflite_predict(root / file_name, images, document, entry)
                entry["top1"] = pack.top1(predictions, labels)
                files.append(entry)
                log.info(
                    "%s %s: top1 %.4f, max |logit - onnx| %.5f, %d bytes",
                    name,
                    file_name,
                    entry["top1"],
                    info["max_abs_diff"],
                    (root / file_name).stat().st_size,
                )
            document["files"] = files
            document["provenance"]["tflite_max_abs_diff"] = {
                k: round(v["max_abs_diff"], 6) for k, v in result.items()
            }
            pack.write_json(root / "model.json", document)


# --- check --------------------------------------------------------------------------------------


def check(out: Path) -> int:
    """Verify every package under ``out``; print a table; return the exit status."""
    from refmodel.check import CheckError, check_package, format_table

    rows = []
    try:
        for name in MIN_TOP1:
            rows += check_package(out / name)
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(rows))
    print("ok: digests, top-1 and histograms match model.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the committed packages")
    parser.add_argument("--tflite", action="store_true", help="also make TFLite files")
    parser.add_argument(
        "--tflite-only",
        action="store_true",
        help="add TFLite files to the existing packages, no training",
    )
    parser.add_argument("--out", type=Path, default=MODELS, help="where the packages go")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "refmodel")
    parser.add_argument("--jobs", type=int, default=2, help="processes rendering images")
    # One thread: on 2 shared cores, 2 torch threads were 2-15x slower per step than one.
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.check:
        return check(args.out)
    if args.tflite_only:
        add_tflite(args.out)
        return 0
    generate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
