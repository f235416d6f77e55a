"""A hand-written training step for the built-in MLP trained with SGD.

At small batch sizes a step of the seeds' MLP is memory- and overhead-bound, not compute-bound:
autograd writes every weight gradient to its own tensor, the optimizer reads it back to update
the weight, and a few dozen small kernels each pay their dispatch. `MLPStep` does the same
arithmetic, forward, backward and update, in about half the kernels and without gradient
tensors: each weight gradient h^T d is accumulated straight into the weight (or its momentum
buffer) by one in-place `addmm_`, after the gradient flowing to the layer below has been taken
through the not yet updated weight, exactly as backpropagation orders it.

The math is autograd's (log-softmax cross-entropy, ReLU, `torch.optim.SGD` with momentum,
Nesterov and weight decay, dampening 0); the floats agree to rounding, not bit for bit, since a
fused multiply-add rounds once where autograd then the optimizer round twice
(tests/test_fastpath.py bounds it, per step and over training). A trial stays bit-identical
from one run to the next. Momentum buffers live in the optimizer's state under torch's own key,
so checkpoints are the same as on the autograd path, and a trial may resume on either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from batchlab.models import MLP


class MLPStep:
    """One SGD step of an `MLP` on a batch, in place: `loss, correct = step(xb, yb)`.

    The learning rate, momentum, Nesterov flag and weight decay are read from the optimizer's
    (single) parameter group at every call, so lr schedules and warmup apply as usual.
    """

    def __init__(self, model: MLP, optimizer: torch.optim.Optimizer) -> None:
        self.linears = [m for m in model if isinstance(m, nn.Linear)]
        self.optimizer = optimizer
        self._constants: dict[tuple[int, float], torch.Tensor] = {}

    @staticmethod
    def supports(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """True for the built-in MLP (Flatten, Linear/ReLU..., Linear) with plain SGD."""
        if type(model) is not MLP or type(optimizer) is not torch.optim.SGD:
            return False
        if len(optimizer.param_groups) != 1 or optimizer.param_groups[0]["dampening"] != 0:
            return False
        kinds = [type(m) for m in model]
        hidden = (len(kinds) - 2) // 2
        return kinds == [nn.Flatten] + [nn.Linear, nn.ReLU] * hidden + [nn.Linear]

    @torch.no_grad()
    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on (xb, yb); return the batch's mean loss and its count of correct predictions
        (0-d tensors, no device sync), both taken before the update as autograd would."""
        n = xb.shape[0]
        inputs = [xb.reshape(n, -1)]  # the input of each linear layer (post-ReLU below the top)
        z = inputs[0]
        for i, lin in enumerate(self.linears):
            z = torch.addmm(lin.bias, z, lin.weight.t())
            if i < len(self.linears) - 1:
                z = z.relu_()
                inputs.append(z)
        logp = z.log_softmax(dim=1)
        loss = F.nll_loss(logp, yb)
        correct = (z.argmax(dim=1) == yb).sum()
        ones = self._filled(n, 1.0, z)
        # d(mean cross-entropy)/d(logits) = (softmax - onehot) / n
        d = logp.exp_().scatter_add_(1, yb.unsqueeze(1), self._filled(n, -1.0, z).unsqueeze(1))
        d.div_(n)
        for i in range(len(self.linears) - 1, -1, -1):
            lin, h = self.linears[i], inputs[i]
            below = d @ lin.weight if i > 0 else None  # through the weight before its update
            self._update(lin.weight, d.t(), h)  # gradient d^T h
            self._update(lin.bias, d.t(), ones)  # gradient d^T 1 = the sum over the batch
            if below is not None:
                # ReLU's backward, autograd's own kernel: h = relu(z) > 0 exactly where z > 0
                d = torch.ops.aten.threshold_backward(below, h, 0)
        return loss, correct

    def _filled(self, n: int, value: float, like: torch.Tensor) -> torch.Tensor:
        """A vector of n `value`s (kept: a batch size recurs at every step)."""
        out = self._constants.get((n, value))
        if out is None or out.device != like.device or out.dtype != like.dtype:
            out = torch.full((n,), value, device=like.device, dtype=like.dtype)
            self._constants[(n, value)] = out
        return out

    def _update(self, p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """SGD on `p` with gradient a @ b (a matrix for a weight, a vector for a bias), as
        torch.optim.SGD does it; without momentum or decay, in one in-place kernel."""
        group = self.optimizer.param_groups[0]
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        acc = p.addmm_ if b.dim() == 2 else p.addmv_
        if momentum == 0 and wd == 0:
            acc(a, b, alpha=-lr)  # p -= lr * a @ b, no gradient tensor
            return
        state = self.optimizer.state[p]
        buf = state.get("momentum_buffer")
        if buf is not None and wd == 0 and not group["nesterov"]:
            (buf.addmm_ if b.dim() == 2 else buf.addmv_)(a, b, beta=momentum)  # m * buf + a @ b
            p.add_(buf, alpha=-lr)
            return
        grad = a @ b
        if wd != 0:
            grad = grad.add(p, alpha=wd)
        if momentum == 0:
            p.add_(grad, alpha=-lr)
            return
        if buf is None:  # a first step: the buffer starts as the gradient, as in torch.optim.SGD
            buf = state["momentum_buffer"] = grad.clone()
        else:
            buf.mul_(momentum).add_(grad)
        if group["nesterov"]:
            p.add_(grad, alpha=-lr).add_(buf, alpha=-lr * momentum)
        else:
            p.add_(buf, alpha=-lr)
