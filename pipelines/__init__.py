"""KFP v2 pipelines built from ``components/``; ``PIPELINES`` maps a CLI name to its module.

Each module defines ``build(k8s=None)`` returning the ``@dsl.pipeline`` function: ``k8s`` (a
``pipelines.k8s.K8sSettings``) adds the Kubernetes platform settings for compile/submit; local runs build without.
"""

from __future__ import annotations

import importlib

PIPELINES = {
    "sparse_transfer": "pipelines.sparse_transfer",
    "sparsify_from_scratch": "pipelines.sparsify_from_scratch",
    "sparsity_sweep": "pipelines.sparsity_sweep",
}


def build(name: str, k8s=None):
    """The pipeline function for ``name`` (a key of PIPELINES); KeyError for an unknown name."""
    return importlib.import_module(PIPELINES[name]).build(k8s)
