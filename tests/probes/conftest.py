"""Fixtures for the probe tests: a tiny classification task, tiny models, and a mini engine loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.probes import ProbeContext, ProbeSuite, probe_generator

Data = tuple[torch.Tensor, torch.Tensor]
ModelFactory = Callable[..., nn.Module]
TrainLoop = Callable[..., list[dict[str, torch.Tensor]]]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add overhead (and the CI box has 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def toy_data() -> Data:
    """64 examples, 4 features, 3 classes from a noisy linear teacher (seeded)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    teacher = torch.randn(4, 3, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(64, 3, generator=g)).argmax(dim=1)
    return x, y


def _mlp(seed: int = 0, *, dtype: torch.dtype = torch.float32, noisy: bool = False) -> nn.Module:
    """4 -> 6 -> 3 with tanh (smooth, so Hessians are well defined); `noisy` adds BN + dropout."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if noisy:
            model: nn.Module = nn.Sequential(
                nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)
            )
        else:
            model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    return model.to(dtype)


@pytest.fixture
def make_mlp() -> ModelFactory:
    return _mlp


def _train(
    model: nn.Module,
    data: Data,
    *,
    suite: ProbeSuite | None,
    steps: int,
    batch_size: int = 8,
    lr: float = 0.1,
    momentum: float = 0.0,
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """The engine's loop in miniature, calling the suite exactly as docs/probes.md says.

    Returns, per step, the training gradients the optimizer used (for reference checks).
    """
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    shuffle = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global RNG
    ctx = ProbeContext(
        model=model,
        loss_fn=F.cross_entropy,
        x_train=x,
        y_train=y,
        step=0,
        batch_size=batch_size,
        generator=probe_generator(seed),
    )
    if suite is not None:
        suite.start(ctx)
    model.train()
    used: list[dict[str, torch.Tensor]] = []
    step = 0
    while step < steps:
        perm = torch.randperm(x.shape[0], generator=shuffle)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            due = suite is not None and suite.due(step + 1)
            if suite is not None and due:
                suite.after_backward(ctx.at(step + 1))
            used.append(
                {
                    n: p.grad.detach().clone()
                    for n, p in model.named_parameters()
                    if p.grad is not None
                }
            )
            opt.step()
            step += 1
            if suite is not None and due:
                suite.after_update(ctx.at(step))
            if step >= steps:
                break
    if suite is not None:
        suite.finish(ctx.at(step))
    return used


@pytest.fixture
def train_loop() -> TrainLoop:
    return _train
