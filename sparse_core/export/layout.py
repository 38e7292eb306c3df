"""File names in a deployment folder beside ``model.onnx``: the engine-specific forms of a QDQ export (same weights
and grids, rewritten by ``qdq`` for one engine), which ``graph.deployment_model`` picks for that engine."""

DEEPSPARSE_FILE = "model.deepsparse.onnx"
OPENVINO_FILE = "model.openvino.onnx"
ENGINE_FILES = {"deepsparse": DEEPSPARSE_FILE, "openvino": OPENVINO_FILE}  # what `deployment_model` picks per engine
