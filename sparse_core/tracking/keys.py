"""Standard metric and tag names, so every run (train, export, benchmark, pipeline step) lines up in the MLflow
UI compare page and in ``promote_champion``."""

# metric key -> what it is. Loggers use these names exactly; anything else is logged under its own name too.
METRICS = {
    "map50": "box mAP@0.5 on the validation set (0..1)",
    "map50_95": "box mAP@0.5:0.95 (0..1)",
    "mask_map50": "mask mAP@0.5 (segmentation models)",
    "mask_map50_95": "mask mAP@0.5:0.95 (segmentation models)",
    "sparsity": "fraction of zero weights over the prunable layers (0..1)",
    "images_per_s": "benchmark throughput, images per second",
    "latency_p50_ms": "benchmark median latency per batch, ms",
    "latency_p90_ms": "benchmark 90th percentile latency per batch, ms",
    "size_mb": "model.onnx size, MB",
    "size_gzip_mb": "model.onnx gzip-compressed size, MB (zeros compress)",
}
METRIC_KEYS = tuple(METRICS)

# lineage tags set on runs and on registered model versions (see lineage_tags)
TAG_RECIPE_SHA256 = "recipe_sha256"
TAG_GIT_COMMIT = "git_commit"
TAG_VERSION = "sparsepipe_version"
TAG_PIPELINE_RUN_ID = "pipeline_run_id"
TAG_DATA_HASH = "data_hash"
TAG_BASE = "base_model"
TAG_ONNX_SHA256 = "onnx_sha256"
TAG_STEP_KEY = "sparsepipe.step_key"  # on a registered version: the pipeline step that created it (retries reuse it)
LINEAGE_TAG_KEYS = (TAG_RECIPE_SHA256, TAG_GIT_COMMIT, TAG_VERSION, TAG_PIPELINE_RUN_ID, TAG_DATA_HASH, TAG_BASE)
# a model version (or its run) tagged baseline=dense is the reference for constraints such as 'map50>=0.9*dense'
TAG_BASELINE = "baseline"
# MLflow 3 opens an experiment on the page its kind names; without this tag it guesses (often the GenAI overview).
# The UI's values (mlflow/server/js ExperimentKind): genai_development, custom_model_development, finetuning, ...
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # shown in the UI as "Machine learning": runs table, compare view
# on a pipeline's parent run (sparse_core.tracking.rollup): the model the pipeline delivered
TAG_REGISTERED = "sparsepipe.registered"  # NAME/VERSION
TAG_MODEL_URI = "sparsepipe.model_uri"  # models:/NAME/VERSION
BASELINE_INT8 = "openvino-int8"  # TAG_BASELINE value of the OpenVINO INT8 post-training baseline
