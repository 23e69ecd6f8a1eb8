"""Inference runtime: model packages, back ends, pre/post-processing, pipeline, self-test.

Importing this package needs only numpy and msgspec; each back end imports its library
(onnxruntime, openvino, ai_edge_litert / tflite_runtime, tensorrt, cv2) when it is used.

Modules: ``package`` (model.json), ``backends`` (registry + one module per back end),
``preprocess`` / ``postprocess``, ``sources`` (cameras, streams, files), ``chain`` (fallback
chain), ``pipeline`` (the loop the supervisor runs), ``selftest`` (the health gate), ``cli``.
"""
