"""batchlab: controlled batch-size studies for PyTorch."""

from __future__ import annotations

from batchlab._version import __version__
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

__all__ = ["EvalRecord", "FrozenTrial", "TrialState", "__version__"]
