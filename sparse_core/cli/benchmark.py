"""``sparsepipe benchmark MODEL [--engine onnxruntime|openvino|deepsparse] [--precision f32|bf16|f16] [--batch N]
[--isa AVX512_CORE_VNNI] [--imgsz N] [--threads N] [--warmup N] [--iterations N | --seconds S] [--compare DENSE]
[--no-profile] [--json]``."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="measure img/s, latency, size and sparsity of an exported model",
        description="Benchmark an .onnx file or deployment folder on CPU; --compare runs a second model interleaved "
        "in the same process and reports speedup (MODEL img/s / OTHER img/s) and size_ratio_gzip (OTHER / MODEL).",
    )
    p.add_argument("model", metavar="MODEL", help=".onnx file or deployment folder (holding model.onnx)")
    p.add_argument("--engine", default="onnxruntime", help="onnxruntime (default), openvino, or deepsparse (run in its "
                   "side venv, see `make deepsparse-venv`)")
    p.add_argument("--precision", default=None, help="OpenVINO inference precision f32, bf16 or f16 (default: "
                   "OpenVINO's own, bf16 on CPUs with AVX512_BF16/AMX; the resolved one is reported)")
    p.add_argument("--isa", default=None, help="OpenVINO only: cap oneDNN's instruction set (ONEDNN_MAX_CPU_ISA, "
                   "e.g. AVX512_CORE_VNNI: on AMX CPUs its INT8 kernels ran thinned models faster than AMX's); "
                   "both models run capped, each in a worker process")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the model's static batch)")
    p.add_argument("--imgsz", type=int, default=None, help="image size (must match a static input shape)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: CPUs available)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per model first (default 10)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iterations", type=int, default=None, help="timed runs per model")
    g.add_argument("--seconds", type=float, default=None, help="time budget for the timed runs (default 10 s)")
    p.add_argument("--compare", metavar="DENSE", default=None, help="baseline model (e.g. the dense export), run "
                   "interleaved in the same process")
    p.add_argument("--no-profile", dest="profile_runs", action="store_const", const=0, default=10,
                   help="skip the per-op profile and integer-kernel share after timing")
    p.add_argument("--mlflow", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI): log the "
                   "metrics on the run that produced MODEL")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    p.set_defaults(func=run)


def _row(r: dict) -> list[str]:
    from sparse_core.bench.why import profile_table

    lat = r["latency_ms"]
    share = r.get("integer_conv_mac_share")
    lines = [f"{r['images_per_s']:9.2f} img/s  mean {lat['mean']:.2f} p50 {lat['p50']:.2f} p90 {lat['p90']:.2f} "
             f"p99 {lat['p99']:.2f} ms  {r['size_mb']:.2f} MB (gzip {r['size_gzip_mb']:.2f})  "
             f"sparsity {r['sparsity']:.1%}{'  INT8' if r['quantized'] else ''}  precision {r.get('precision')}"
             + (f"  conv MACs in integer kernels {share:.0%}" if share is not None else "") + f"  {r['model']}"]
    if r.get("native_share") is not None:
        lines.append(f"  DeepSparse compiled {r['native_share']:.0%} of the graph natively")
    if r.get("profile"):
        lines += profile_table(r["profile"])
    return lines


def run(args: argparse.Namespace) -> int:
    from sparse_core.bench import benchmark

    r = benchmark(args.model, engine=args.engine, batch=args.batch, imgsz=args.imgsz, threads=args.threads,
                  warmup=args.warmup, iterations=args.iterations, seconds=args.seconds, compare=args.compare,
                  precision=args.precision, profile_runs=args.profile_runs, isa=args.isa)
    cpu = r["cpu"]
    cap = f", oneDNN ISA capped at {r['isa_cap']}" if r.get("isa_cap") else ""
    print(f"{r['engine']} {r['engine_version']} ({r.get('precision')}{cap}), {r['threads']} threads, batch {r['batch']}, "
          f"{r['imgsz']} px, {r['iterations']} iterations; CPU {cpu['model']} ({cpu['isa']})")
    print("\n".join(_row(r)))
    if "compare" in r:
        print("baseline (--compare):")
        print("\n".join(_row(r["compare"])))
        print(f"speedup {r['speedup']:.3f}x (interleaved), gzip size ratio {r['size_ratio_gzip']:.2f}x")
    print(f"verdict: {r['verdict']}")
    from sparse_core.tracking.record import record_benchmark

    r["mlflow_run_id"] = record_benchmark(args.model, r, args.mlflow)
    if args.json:
        print(json.dumps(r))
    return 0
