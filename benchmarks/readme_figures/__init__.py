"""The renderers of README.md's measured figures, one module per README section.

``benchmarks/report.py`` replaces each ``<!-- report:NAME -->`` block of README.md with
``RENDERERS[NAME](Results())``; see its docstring for how to add a figure.
"""

from . import (  # noqa: F401  (register their renderers)
    data,
    finetune,
    global_cam,
    global_ckn,
    global_desc,
    heads,
    hpatches,
    instance_search,
    patches,
    presets,
    query,
    quickstart,
    reruns,
    scale,
    settings,
    speed,
    vlad,
)
from .core import RENDERERS, ReportError, Results

__all__ = ["RENDERERS", "ReportError", "Results"]
