"""``sparsepipe models register|pull|list|promote``: the MLflow Model Registry from the shell."""

from __future__ import annotations

import argparse
import json


def _uri_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", "--mlflow", dest="tracking_uri", metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="registered models in MLflow: register, pull, list, promote",
                              description="Registered sparsepipe models in the MLflow Model Registry.")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")

    r = sub.add_parser("register", help="register a deployment folder (model.onnx, recipe.yaml, ...) as a version")
    r.add_argument("deploy_dir", help="deployment folder written by `sparsepipe export`")
    r.add_argument("--name", required=True, help="registered model name")
    r.add_argument("--run-id", help="MLflow run that produced the checkpoint (default: export.json's mlflow_run_id)")
    r.add_argument("--alias", help="alias to move to the new version, e.g. candidate")
    _uri_arg(r)
    r.set_defaults(func=_register)

    pl = sub.add_parser("pull", help="write a registered version's deployment folder")
    pl.add_argument("spec", metavar="NAME[@ALIAS|/VERSION]", help="NAME (latest), NAME@ALIAS or NAME/VERSION")
    pl.add_argument("--out", required=True, help="folder to write (new, empty, or an earlier pull)")
    _uri_arg(pl)
    pl.set_defaults(func=_pull)

    ls = sub.add_parser("list", help="registered models and versions with their aliases and metrics")
    _uri_arg(ls)
    ls.set_defaults(func=_list)

    pr = sub.add_parser("promote", help="move alias 'champion' to the best version by a run metric")
    pr.add_argument("name", help="registered model name")
    pr.add_argument("--metric", required=True, help="run metric to maximise, e.g. images_per_s")
    pr.add_argument("--lower-is-better", action="store_true", help="minimise the metric (e.g. latency_p50_ms)")
    pr.add_argument("--constraint", help="e.g. 'map50>=0.9*dense' (dense = the baseline version's value)")
    pr.add_argument("--max-map-drop", type=float, metavar="POINTS",
                    help="accuracy budget: at most POINTS mAP50-95 points below the dense version (1.0 = 0.01)")
    _uri_arg(pr)
    pr.set_defaults(func=_promote)


def _register(args) -> int:
    from sparse_core.tracking.registry import register_model

    res = register_model(args.deploy_dir, args.name, run_id=args.run_id, alias=args.alias,
                         tracking_uri=args.tracking_uri)
    print(json.dumps(res) if args.json else f"registered {res['model_uri']} (run {res['run_id']})"
          + (f", alias {args.alias}" if args.alias else ""))
    return 0


def _pull(args) -> int:
    from sparse_core.tracking.registry import SOURCE_FILE, pull_model

    out = pull_model(args.spec, args.out, tracking_uri=args.tracking_uri)
    src = json.loads((out / SOURCE_FILE).read_text())
    if args.json:
        print(json.dumps({"out": str(out), "name": src["name"], "version": src["version"],
                          "onnx_sha256": src["onnx_sha256"], "files": sorted(p.name for p in out.iterdir())}))
    else:
        print(f"pulled models:/{src['name']}/{src['version']} to {out}")
    return 0


def _list(args) -> int:
    from sparse_core.tracking.keys import METRIC_KEYS
    from sparse_core.tracking.registry import list_models

    rows = list_models(tracking_uri=args.tracking_uri)
    if args.json:
        print(json.dumps({"models": rows}))
        return 0
    if not rows:
        print("no registered models")
        return 0
    cols = [k for k in METRIC_KEYS if any(k in r["metrics"] for r in rows)]
    header = ["name", "version", "aliases", *cols]
    table = [header] + [[r["name"], r["version"], ",".join(r["aliases"]) or "-",
                         *(f"{r['metrics'][k]:.4g}" if k in r["metrics"] else "-" for k in cols)] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _promote(args) -> int:
    from sparse_core.tracking.registry import map_drop_constraint, promote_champion

    constraint = ", ".join(c for c in (args.constraint, None if args.max_map_drop is None else
                                       map_drop_constraint(args.max_map_drop)) if c)
    res = promote_champion(args.name, args.metric, higher_is_better=not args.lower_is_better,
                           constraint=constraint or None, tracking_uri=args.tracking_uri)
    print(json.dumps(res) if args.json else
          f"champion of {res['name']}: version {res['version']} ({res['metric']}={res['value']:.4g}; "
          f"was {res['previous'] or 'unset'})")
    return 0
