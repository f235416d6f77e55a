from __future__ import annotations

import subprocess
import sys

# Fresh interpreters (pytest's may have imported torch._dynamo already), with and without
# `skip_dynamo_import`: the optimizer's methods do the same, only the import is spared.
CODE = """
import sys, torch
from batchlab.nodynamo import skip_dynamo_import
from batchlab.step import sgd_step

if sys.argv[1] == "skip":
    skip_dynamo_import()
torch.manual_seed(0)
model = torch.nn.Linear(3, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for i in range(3):
    opt.zero_grad(set_to_none=True)
    model(torch.full((4, 3), float(i))).square().sum().backward()
    sgd_step(opt, list(model.parameters()))  # batchlab's step: no optimizer.step()
opt.load_state_dict(opt.state_dict())
print("torch._dynamo" in sys.modules, model.weight.flatten().tolist())
"""


def run(mode: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True
    )
    return out.stdout.split(maxsplit=1)


def test_optimizer_methods_run_without_importing_dynamo() -> None:
    skipped, plain = run("skip"), run("plain")
    assert (skipped[0], plain[0]) == ("False", "True")
    assert skipped[1] == plain[1]  # the same weights, bit for bit (repr of floats)
