"""Spare a process that never compiles an optimizer the import of torch._dynamo (2-4 s here).

torch wraps `Optimizer.add_param_group`, `zero_grad`, `state_dict` and `load_state_dict` in
`torch._disable_dynamo`, which imports torch._dynamo at the wrapper's first call (to keep the
method out of torch.compile graphs) and caches the excluded method on the plain one as
`__dynamo_disable`. batchlab compiles models only (`step.AutogradStep`), never code that calls
these methods, so in the processes it owns (`batchlab run`, pool workers) `skip_dynamo_import`
caches each plain method as its own exclusion: the same calls, without the import. A trial that
calls `optimizer.step()` (Adam, or a step through autograd) still imports it there.
"""

from __future__ import annotations

import sys

METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def skip_dynamo_import() -> None:
    """Cache the optimizer methods above as their own dynamo exclusion, unless torch._dynamo is
    already loaded (then the cache torch fills in itself costs nothing)."""
    if "torch._dynamo" in sys.modules:
        return
    import torch

    for name in METHODS:
        plain = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if plain is not None and not hasattr(plain, "__dynamo_disable"):
            setattr(plain, "__dynamo_disable", plain)  # the attribute torch._compile reads
