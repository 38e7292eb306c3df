"""The deployment chosen by measurement: of the forms a trained model can ship in, the fastest that holds accuracy
on the engine and CPU it will run on.

Why: INT8 on top of a channel-thinned YOLO does not pay everywhere. Measured on three CPUs
(benchmarks/results/speed*.md), the QDQ model ran 0.57-0.86x the thin float model on onnxruntime (its QLinearConv
loses to the FP32 NCHWc conv at narrow widths) and 0.62-1.06x at OpenVINO's bf16 default, but 1.16-1.64x on
OpenVINO f32 with VNNI and 1.26-1.48x on DeepSparse for YOLOv8s. A fixed rule ships the slower model somewhere, so
the forms are timed on the target itself.

Candidates come from deployment folders written by ``export``: a float export's ``model.onnx``; a quantized
export's ``model.onnx`` (QDQ) and its form for the engine (``model.openvino.onnx`` / ``model.deepsparse.onnx``);
on OpenVINO with an AMX CPU each INT8 file again with oneDNN capped at AVX-512 VNNI (``openvino_isa``). All are
loaded together and timed interleaved (``bench.benchmark_many``); with a data yaml each file is scored on the
engine (DeepSparse's form on onnxruntime: DeepSparse cannot run Ultralytics' validator) and an INT8 candidate
must stay within ``accuracy.MAX_DROP`` of the float one and have passed export's own gate. The fastest candidate
that passes is chosen; an INT8 one must beat the float model by more than ``NOISE`` (run-to-run spread on a quiet
machine), otherwise the float model ships: same speed, one rounding fewer.

``write_deployment`` assembles the folder: the chosen candidate's export at the top (its file as ``model.onnx``),
every export under ``candidates/<name>/``, and ``deployment.json`` with the table, the CPU, and why.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparse_core.errors import UserError
from sparse_core.export.layout import DEPLOYMENT_FILE, ENGINE_FILES

PRECISIONS = ("auto", "float", "int8")  # which forms may ship: any, the float model only, INT8 only
CANDIDATES_DIR = "candidates"
NOISE = 0.03  # INT8 must beat float by more than this (relative img/s) to be chosen


@dataclass(frozen=True)
class Candidate:
    """One timed form: ``file`` of the export in ``folder`` (``source`` names it), run under ``isa`` when set."""

    name: str
    source: str
    folder: Path
    file: str
    int8: bool
    isa: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / self.file


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"--precision: {precision!r} is not supported; expected one of {', '.join(PRECISIONS)}")
    return precision


def _export_info(folder: Path) -> dict:
    f = folder / "export.json"
    if not f.is_file():
        raise UserError(f"{folder}: no export.json; expected a deployment folder written by `sparsepipe export`")
    return json.loads(f.read_text())


def candidates(folders: dict[str, Path], engine: str, precision: str = "auto", amx: bool | None = None) -> list[Candidate]:
    """Every form of the exports in ``folders`` (name -> folder) worth timing on ``engine``; ``amx`` None reads
    the CPU (capped twins of the INT8 files on OpenVINO, whose AMX INT8 kernels are slow at thin widths)."""
    from sparse_core.bench.openvino_isa import VNNI_CAP

    check_precision(precision)
    if amx is None:
        from sparse_core.bench.cpu import cpu_info

        amx = cpu_info()["flags"]["amx"]
    out = []
    for source, folder in folders.items():
        int8 = bool(_export_info(Path(folder)).get("quantized"))
        if (precision == "float" and int8) or (precision == "int8" and not int8):
            continue
        form = ENGINE_FILES.get(engine)
        files = ["model.onnx"] + ([form] if int8 and form and (Path(folder) / form).is_file() else [])
        for f in files:
            name = source if f == "model.onnx" else f"{source}-{engine}-form"
            out.append(Candidate(name, source, Path(folder), f, int8))
            if int8 and engine == "openvino" and amx:
                out.append(Candidate(f"{name}-vnni", source, Path(folder), f, int8, VNNI_CAP))
    if not out:
        raise UserError(f"--precision {precision}: none of {', '.join(folders)} is a {precision} model; expected "
                        f"{'a float' if precision == 'float' else 'an INT8 (QAT)'} export among the candidates")
    return out


def _links(cands: list[Candidate], tmp: Path) -> dict[str, Path]:
    """One uniquely named link per file: a file named model.onnx would be swapped for its engine form by
    ``graph.deployment_model``, and each form must be timed and scored as itself."""
    links = {}
    for c in cands:
        link = tmp / f"{c.source}--{c.file}"
        if not link.exists():
            link.symlink_to(c.path.resolve())
        links[c.name] = link
    return links


def _scores(cands: list[Candidate], links: dict[str, Path], data: Path, engine: str,
            engine_precision: str | None) -> dict[str, dict]:
    """mAP50-95 per file on the target engine (DeepSparse's form on onnxruntime); ISA twins share their file's."""
    from sparse_core.onnx_val import val_onnx

    on = engine if engine in ("onnxruntime", "openvino") else "onnxruntime"
    by_file: dict[Path, dict] = {}
    for c in cands:
        if c.path not in by_file:
            r = val_onnx(links[c.name], data, engine=on, precision=engine_precision if on == "openvino" else None)
            by_file[c.path] = {"map50_95": round(float(r["map50_95"]), 6), "scored_on": on}
    return {c.name: by_file[c.path] for c in cands}


def _gate(cands: list[Candidate], scores: dict[str, dict]) -> dict[str, tuple[bool, str]]:
    """(passes, reason) per candidate: export's own gate (an INT8 export flagged past 1 point), then at most
    ``MAX_DROP`` below the float candidate on the target engine (the best float one when several)."""
    from sparse_core.export.accuracy import MAX_DROP

    floats = [scores[c.name]["map50_95"] for c in cands if not c.int8 and c.name in scores]
    ref = max(floats) if floats else None
    out = {}
    for c in cands:
        flagged = bool((_export_info(c.folder).get("accuracy") or {}).get("flagged"))
        if flagged:
            out[c.name] = (False, "export's accuracy gate flagged it (INT8 vs fake-quant drop > 1 point)")
        elif c.name not in scores:
            out[c.name] = (True, "accuracy not measured (no data yaml)")
        elif ref is not None and c.int8 and scores[c.name]["map50_95"] < ref - MAX_DROP:
            out[c.name] = (False, f"mAP50-95 {scores[c.name]['map50_95']:.4f} is more than {MAX_DROP * 100:.0f} "
                                  f"point below the float model's {ref:.4f}")
        else:
            out[c.name] = (True, "within the accuracy gate")
    return out


def _pick(rows: list[dict]) -> tuple[dict, str]:
    """The fastest row that passes the gate; an INT8 row only when it beats the best float row by > ``NOISE``."""
    ok = [r for r in rows if r["accuracy_ok"]]
    if not ok:
        raise UserError("no candidate holds accuracy: " + "; ".join(f"{r['name']}: {r['accuracy_note']}" for r in rows))
    best = max(ok, key=lambda r: r["images_per_s"])
    floats = [r for r in ok if not r["int8"]]
    if not floats:
        return best, f"{best['name']} is the fastest of the INT8 forms within the accuracy gate (no float candidate)"
    flt = max(floats, key=lambda r: r["images_per_s"])
    ratio = best["images_per_s"] / flt["images_per_s"]
    if best["int8"] and ratio > 1 + NOISE:
        return best, (f"{best['name']} runs {ratio:.2f}x the float model within the accuracy gate "
                      f"(INT8 pays on this engine and CPU)")
    if best["int8"]:
        return flt, (f"the fastest INT8 form ({best['name']}) runs only {ratio:.2f}x the float model, within "
                     f"{NOISE:.0%} noise: the float model ships")
    int8 = [r for r in ok if r["int8"]]
    tail = (f"; the fastest INT8 form ({max(int8, key=lambda r: r['images_per_s'])['name']}) runs "
            f"{max(r['images_per_s'] for r in int8) / flt['images_per_s']:.2f}x it") if int8 else ""
    return flt, f"the float model is the fastest candidate{tail}"


def choose(folders: dict[str, str | os.PathLike], engine: str, engine_precision: str | None = None,
           precision: str = "auto", data: str | os.PathLike | None = None, threads: int | None = None,
           seconds: float = 5.0, warmup: int = 3) -> dict[str, Any]:
    """Time every candidate of ``folders`` (name -> export folder) interleaved on ``engine``, score them on
    ``data`` when given, and pick one; returns the content of deployment.json (``model`` still to be placed)."""
    from sparse_core.bench.cpu import cpu_info
    from sparse_core.bench.runner import benchmark_many

    folders = {k: Path(v) for k, v in folders.items()}
    cands = candidates(folders, engine, precision)
    with tempfile.TemporaryDirectory(prefix="sparsepipe-choose-") as tmp:
        links = _links(cands, Path(tmp))
        speed = benchmark_many(links, engine, threads, warmup, seconds, engine_precision,
                               isas={c.name: c.isa for c in cands if c.isa})
        scores = _scores(cands, links, Path(data), engine, engine_precision) if data else {}
    gate = _gate(cands, scores)
    rows = [_row(c, speed[c.name], scores.get(c.name), gate[c.name]) for c in cands]
    flt = max((r["images_per_s"] for r in rows if not r["int8"]), default=None)
    for r in rows:
        r["vs_float"] = round(r["images_per_s"] / flt, 4) if flt else None
    chosen, why = _pick(rows)
    cpu = cpu_info()
    return {"engine": engine, "engine_precision": chosen["precision"], "precision": precision,
            "chosen": chosen["name"], "form": "int8" if chosen["int8"] else "float", "source": chosen["source"],
            "file": chosen["file"], "isa_cap": chosen["isa_cap"], "why": why, "cpu_isa": cpu["isa"], "cpu": cpu,
            "threads": speed[chosen["name"]]["threads"], "input_shape": speed[chosen["name"]]["input_shape"],
            "seconds_per_candidate": seconds, "noise": NOISE, "accuracy_checked": bool(scores), "candidates": rows}


def _row(c: Candidate, s: dict, score: dict | None, gate: tuple[bool, str]) -> dict:
    return {"name": c.name, "source": c.source, "file": c.file, "int8": c.int8, "isa_cap": c.isa,
            "images_per_s": s["images_per_s"], "p50_ms": s["latency_ms"]["p50"], "precision": s["precision"],
            "native_share": s.get("native_share"), "size_gzip_mb": s["size_gzip_mb"],
            "map50_95": score and score["map50_95"], "map_scored_on": score and score["scored_on"],
            "accuracy_ok": gate[0], "accuracy_note": gate[1]}


def write_deployment(out: str | os.PathLike, folders: dict[str, str | os.PathLike], decision: dict) -> dict:
    """Assemble ``out``: the chosen export's files at the top with the chosen file as ``model.onnx``, every export
    under ``candidates/<name>/``, ``deployment.json``. Built beside ``out`` and renamed into place."""
    from sparse_core.export.export import _replace_dir
    from sparse_core.export.graph import sha256

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        src = Path(folders[decision["source"]])
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        if decision["file"] != "model.onnx":
            shutil.copy2(src / decision["file"], tmp / "model.onnx")
        for name, folder in folders.items():
            shutil.copytree(folder, tmp / CANDIDATES_DIR / name, ignore=shutil.ignore_patterns(CANDIDATES_DIR))
        decision = {**decision, "model": "model.onnx", "sha256": sha256(tmp / "model.onnx")}
        (tmp / DEPLOYMENT_FILE).write_text(json.dumps(decision, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return decision


def table(decision: dict) -> list[str]:
    """The candidates as printable lines, the chosen one marked."""
    lines = [f"{'':2}{'candidate':28} {'img/s':>9} {'x float':>8} {'mAP50-95':>9}  precision  accuracy"]
    for r in decision["candidates"]:
        mark = "->" if r["name"] == decision["chosen"] else ""
        vs = f"{r['vs_float']:.2f}" if r["vs_float"] else "-"
        mp = f"{r['map50_95']:.4f}" if r["map50_95"] is not None else "-"
        lines.append(f"{mark:2}{r['name']:28} {r['images_per_s']:9.2f} {vs:>8} {mp:>9}  {r['precision']:9}  "
                     f"{r['accuracy_note']}")
    return lines


def export_for_engine(weights, out: str | os.PathLike, engine: str, float_weights=None, precision: str = "auto",
                      engine_precision: str | None = None, data: str | os.PathLike | None = None,
                      allow_drop: bool = False, imgsz: int | None = None, batch: int = 1, opset: int = 17,
                      threads: int | None = None, seconds: float = 5.0) -> dict:
    """Export ``weights`` (and ``float_weights``: the float model a QAT model was trained from) as candidates,
    ``choose`` among their forms on ``engine`` and write the chosen deployment to ``out``; returns deployment.json.
    ``data`` scores the candidates (default: the data a quantized export was gated on)."""
    from sparse_core.bench.runner import ENGINES
    from sparse_core.export.export import export_model

    if engine not in ENGINES:
        raise UserError(f"--engine: {engine!r} is not supported; expected one of {', '.join(ENGINES)}")
    check_precision(precision)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.candidates.", dir=out.parent) as tmp:
        info = export_model(weights, Path(tmp) / "main", imgsz=imgsz, batch=batch, opset=opset, data=data,
                            allow_drop=allow_drop)
        key = "int8" if info["quantized"] else "float"
        folders = {key: Path(tmp) / key}
        os.replace(Path(tmp) / "main", folders[key])
        if float_weights:
            if key == "float":
                raise UserError(f"--float: given, but --weights {weights} is a float model too; expected --weights "
                                "to be the QAT checkpoint trained from it")
            finfo = export_model(float_weights, Path(tmp) / "float", imgsz=info["imgsz"], batch=batch, opset=opset)
            if finfo["quantized"]:
                raise UserError(f"--float: {float_weights} is quantized; expected the float checkpoint QAT started from")
            folders = {"float": Path(tmp) / "float", **folders}
        data = data or (info.get("accuracy") or {}).get("data")
        decision = choose(folders, engine, engine_precision, precision, data=data, threads=threads, seconds=seconds)
        return write_deployment(out, folders, decision)


def version_tags(decision: dict | None) -> dict[str, str]:
    """Registry version tags of a chosen deployment: form, engine, precision, ISA (and cap), candidate speeds."""
    if not decision:
        return {}
    tags = {"sparsepipe.form": decision["form"], "sparsepipe.chosen": decision["chosen"],
            "sparsepipe.engine": decision["engine"], "sparsepipe.engine_precision": str(decision["engine_precision"]),
            "sparsepipe.precision": decision["precision"], "sparsepipe.cpu_isa": decision["cpu_isa"],
            "sparsepipe.isa_cap": decision["isa_cap"] or ""}
    tags["sparsepipe.candidates"] = json.dumps({r["name"]: r["images_per_s"] for r in decision["candidates"]})
    return tags


def candidate_metrics(decision: dict | None) -> dict[str, float]:
    """MLflow metrics putting the candidates' speeds side by side (``candidate_<name>_images_per_s``)."""
    if not decision:
        return {}
    out = {}
    for r in decision["candidates"]:
        key = r["name"].replace("-", "_")
        out[f"candidate_{key}_images_per_s"] = r["images_per_s"]
        if r["map50_95"] is not None:
            out[f"candidate_{key}_map50_95"] = r["map50_95"]
    chosen = next(r for r in decision["candidates"] if r["name"] == decision["chosen"])
    out["chosen_images_per_s"] = chosen["images_per_s"]
    return out
