"""Sensitivity analysis and latency-targeted recipes (issue 18): ``analyze``, ``generate``, ``budget``."""
