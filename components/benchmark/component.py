"""benchmark: throughput, latency and size of an exported model on a stock CPU runtime."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def benchmark(
    deployment: Input[Model],
    result: Output[Artifact],
    metrics: Output[Metrics],
    engine: str = "onnxruntime",
    precision: str = "",
    isa: str = "",
    threads: int = 0,
    seconds: float = 0.0,
    iterations: int = 50,
    warmup: int = 5,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
    cache_dir: str = "",
) -> float:
    """Benchmark the deployment folder; the JSON result and the standard metrics come out.

    Measures throughput, latency percentiles and size (raw and gzip) of the deployment folder on onnxruntime,
    OpenVINO or DeepSparse, with the precision the engine really computed in, a per-op-type profile, the share of
    conv MACs run in integer kernels and a verdict line. The cache key includes the CPU and the precision, so a
    speed measured on another machine is never reused.

    Args:
        deployment: export_model output.
        result: Output ``benchmark.json`` (img/s, latency percentiles, MB raw/gzip, CPU, versions).
        metrics: images_per_s, latency_p50_ms, latency_p90_ms, size_mb, size_gzip_mb, integer_conv_mac_share,
            images_per_s_<engine>.
        engine: ``onnxruntime``, ``openvino``, or ``deepsparse`` (when its side venv is in the image).
        precision: OpenVINO inference precision ``f32``/``bf16``/``f16``; empty keeps OpenVINO's default (bf16 on
            AVX512_BF16/AMX CPUs). The resolved precision is in the result and logged as an MLflow param.
        isa: OpenVINO only: cap oneDNN's instruction set (``ONEDNN_MAX_CPU_ISA``), e.g. ``AVX512_CORE_VNNI`` where
            AMX INT8 kernels run a thinned model slower; empty = no cap.
        threads: Inference threads; 0 = the CPUs this pod may use.
        seconds: Measure for this long (0 = use ``iterations``).
        iterations: Timed iterations when ``seconds`` is 0.
        warmup: Untimed warm-up iterations.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking).
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.
        cache_dir: Step cache folder; ``none`` disables it.

    Returns:
        Images per second.
    """
    from sparse_core import steps

    res = steps.benchmark(model=deployment.path, out=result.path, engine=engine, threads=threads, seconds=seconds,
                          iterations=iterations, warmup=warmup, precision=precision, isa=isa,
                          ctx=steps.StepContext(mlflow_uri, experiment, parent_run_id, cache_dir))
    for key, value in steps.bench_metrics(res).items():
        metrics.log_metric(key, float(value))
    return float(res["images_per_s"])
