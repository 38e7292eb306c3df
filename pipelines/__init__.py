"""KFP v2 pipelines built from ``components/``; ``PIPELINES`` maps a CLI name to its module.

Each module defines ``build(k8s=None)`` returning the ``@dsl.pipeline`` function: ``k8s`` (a
``pipelines.k8s.K8sSettings``) adds the Kubernetes platform settings for compile/submit; local runs build without.
Everything that imports kfp or talks to Kubernetes lives here (``cli``, ``local``, ``submit``, ``cluster``,
``demo``), so ``sparse_core`` stays a library without them.
"""

from __future__ import annotations

import importlib

from sparse_core.errors import UserError

PIPELINES = {
    "sparse_transfer": "pipelines.sparse_transfer",
    "sparsify_from_scratch": "pipelines.sparsify_from_scratch",
    "sparsity_sweep": "pipelines.sparsity_sweep",
    "auto_sparsify": "pipelines.auto_sparsify",
}


def build(name: str, k8s=None):
    """The pipeline function for ``name`` (a key of PIPELINES); UserError for an unknown name."""
    if name not in PIPELINES:
        raise UserError(f"pipeline {name!r}: unknown; expected one of {', '.join(PIPELINES)}")
    return importlib.import_module(PIPELINES[name]).build(k8s)


def compile_pipeline(name: str, out, k8s=None):
    """Compile pipeline ``name`` to KFP IR YAML at ``out`` (written to a temp file, then renamed); returns the path."""
    import os
    from pathlib import Path

    from kfp import compiler

    from sparse_core.atomic import atomic_file

    func = build(name, k8s)
    with atomic_file(out) as tmp:
        yaml_tmp = tmp.with_suffix(".yaml")  # the compiler picks the format from the suffix
        compiler.Compiler().compile(func, str(yaml_tmp))
        os.replace(yaml_tmp, tmp)
    return Path(out)
