"""KFP v2 components: one folder per step, ``component.py`` (one ``@dsl.component``) + ``README.md``.

Bodies are thin: each imports ``sparse_core.steps`` and calls one function, so the logic is tested without KFP.
"""
