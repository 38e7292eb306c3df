"""sparsepipe core library: recipes, modifiers, Ultralytics integration, export, benchmark, data, zoo, tracking.

Never imports kfp: the KFP components in ``components/`` are thin wrappers around functions here.
"""

__version__ = "0.1.0"
