"""KFP v2 components: one folder per step, ``component.py`` (one ``@dsl.component``), ``metadata.yaml`` and
``README.md``.

Bodies are thin: each imports ``sparse_core.steps`` and calls one function, so the logic is tested without KFP.
``README.md`` and ``metadata.yaml`` are generated from the component's docstring and signature
(``python -m pipelines.component_docs --write``; a test fails when they drift).
"""
