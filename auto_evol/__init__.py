"""auto-evol: Auto Evol-Instruct — optimize the method that evolves instruction data, then use it."""
from .algorithm.method import Method
from .optimize import OptimizeResult, Options, optimize

__all__ = ["Method", "OptimizeResult", "Options", "optimize"]
__version__ = "0.1.0"
