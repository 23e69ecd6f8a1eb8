"""Rebuild a reference network in Keras from its layer list and convert it to TFLite.

Runs in the TensorFlow venv (/work/venv-tf), started by make_reference_model.py --tflite:

    python tflite_convert.py WORK_DIR

WORK_DIR holds ``layers.json`` and ``weights.npz`` (from onnx_layers.read_layers),
``calibration.npy`` and ``reference.npy`` (normalised float32 NHWC inputs) and
``reference_logits.npy`` (onnxruntime's outputs). It writes ``model.tflite`` (FP32, NHWC),
``model_int8.tflite`` (full INT8, uint8 input and output; representative data = calibration
split) and ``result.json`` with each file's reference predictions, quantisation parameters and
the FP32 file's largest difference from onnxruntime.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def build_keras(layers: list[dict[str, Any]], weights: dict[str, np.ndarray]) -> Any:
    """The Keras model of a layer list; torch-layout weights are transposed to Keras layouts."""
    import keras

    inputs = keras.Input(shape=(96, 96, 3), batch_size=1, name="input")
    x = inputs
    for n, layer in enumerate(layers):
        kind = layer["kind"]
        if kind in ("conv", "dwconv"):
            # Explicit symmetric padding: Keras "same" pads stride-2 convs only at the bottom and
            # right, torch pads both sides.
            if layer["padding"]:
                x = keras.layers.ZeroPadding2D(layer["padding"])(x)
            w, b = weights[f"{n}.weight"], weights[f"{n}.bias"]
            if kind == "conv":
                conv = keras.layers.Conv2D(w.shape[0], w.shape[2:], strides=layer["stride"])
                x = conv(x)
                conv.set_weights([w.transpose(2, 3, 1, 0), b])  # [out,in,kh,kw] -> [kh,kw,in,out]
            else:
                conv = keras.layers.DepthwiseConv2D(w.shape[2:], strides=layer["stride"])
                x = conv(x)
                conv.set_weights([w.transpose(2, 3, 0, 1), b])  # [c,1,kh,kw] -> [kh,kw,c,1]
        elif kind == "relu6":
            x = keras.layers.ReLU(max_value=6.0)(x)
        elif kind == "global_avg_max":
            avg = keras.layers.GlobalAveragePooling2D()(x)
            top = keras.layers.GlobalMaxPooling2D()(x)
            x = keras.layers.Concatenate()([avg, top])
        elif kind == "dense":
            w, b = weights[f"{n}.weight"], weights[f"{n}.bias"]
            dense = keras.layers.Dense(w.shape[0], name="logits")
            x = dense(x)
            dense.set_weights([w.T, b])
        else:
            raise ValueError(f"layer {n}: unknown kind {kind!r}")
    return keras.Model(inputs, x)


def run(path: Path, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Outputs (dequantised for INT8) of a TFLite model on float NHWC inputs, and its quant info."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    results = []
    for k in range(len(x)):
        sample = x[k : k + 1]
        if inp["dtype"] != np.float32:
            info = np.iinfo(inp["dtype"])
            sample = np.clip(np.rint(sample / in_scale + in_zero), info.min, info.max)
        interpreter.set_tensor(inp["index"], sample.astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0].astype(np.float32)
        if out["dtype"] != np.float32:
            y = (y - out_zero) * out_scale
        results.append(y)
    quant: dict[str, Any] = {}
    if inp["dtype"] != np.float32:
        quant = {
            "input_scale": float(in_scale),
            "input_zero_point": int(in_zero),
            "input_dtype": np.dtype(inp["dtype"]).name,
            "output_scale": float(out_scale),
            "output_zero_point": int(out_zero),
            "output_dtype": np.dtype(out["dtype"]).name,
        }
    return np.asarray(results), quant


def main(work: Path) -> None:
    """Convert, evaluate, and write result.json into ``work``."""
    import tensorflow as tf

    tf.random.set_seed(0)
    layers = json.loads((work / "layers.json").read_text())
    with np.load(work / "weights.npz") as npz:
        weights = {k: npz[k] for k in npz.files}
    calibration = np.load(work / "calibration.npy")
    reference = np.load(work / "reference.npy")
    onnx_logits = np.load(work / "reference_logits.npy")
    model = build_keras(layers, weights)

    fp32 = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    (work / "model.tflite").write_bytes(fp32)

    def representative() -> Any:
        for k in range(len(calibration)):
            yield [calibration[k : k + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    (work / "model_int8.tflite").write_bytes(converter.convert())

    result: dict[str, Any] = {}
    for name in ("model.tflite", "model_int8.tflite"):
        outputs, quant = run(work / name, reference)
        result[name] = {
            "predictions": outputs.argmax(axis=1).tolist(),
            "quantization": quant,
            "max_abs_diff": float(np.abs(outputs - onnx_logits).max()),
        }
    (work / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
