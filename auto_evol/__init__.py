"""auto-evol: Auto Evol-Instruct — optimize the method that evolves instruction data, then use it.

The package is layered; each subpackage's docstring says what it is for and what it may import:
core (shared vocabulary) <- storage (a run's files) <- llm (the LLM layer) <- algorithm (the paper's
algorithm) <- tracking (MLflow, reports) and cluster (Ray); above them the three verbs, optimize,
evolve and compare (top-level modules: they may import every subpackage but cli), and cli on top.
No module imports upward and no import cycle exists (tests/test_layers.py holds both).
"""
from .algorithm.method import Method
from .optimize import OptimizeResult, Options, optimize

__all__ = ["Method", "OptimizeResult", "Options", "optimize"]
__version__ = "0.1.0"
