"""Model zoo on S3 or a local folder, addressed by SparseZoo-style ``zoo:`` stubs (SparseZoo itself is gone).

``resolve_model`` / ``resolve_recipe`` turn a ``--model`` / ``--recipe`` argument into a local file (fetching and
verifying a stub, passing a local path through); ``publish`` / ``fetch`` / ``list_stubs`` back ``sparsepipe zoo``.
"""

from sparse_core.zoo.entry import fetch, list_stubs, publish, resolve_model, resolve_recipe

__all__ = ["fetch", "list_stubs", "publish", "resolve_model", "resolve_recipe"]
