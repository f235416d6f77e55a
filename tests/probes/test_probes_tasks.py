"""Every probe against a slow, obviously-correct reference, for regression and language models.

The other probe tests use cross-entropy over class logits. Here the loss the probes see is the
one the engine hands them, `task.mean_loss`, of `Regression` (MSE over targets `[N, 2]`) and of
`LanguageModel` (cross-entropy per token over logits `[N, T, V]`), and every reference is built
from a hand-written list of *loss terms* whose mean is the batch's loss:

- regression: one term per target entry, (out_id - y_id)^2 (MSE is their mean over N * D);
- language model: one term per non-padding token, -log softmax(logits_it)[y_it], so the loss is
  a mean over tokens and padding (target -100) counts for nothing.

An *example* is a row: one input and its targets for regression, one whole sequence for a
language model. A per-example gradient is the gradient of that one row's loss, i.e. the mean of
its terms. With every row holding the same number of terms (no padding, or the same amount in
each sequence: the `language-model-padded` case), a batch's loss is the mean of its rows' losses,
so E|G_B|^2 = |G|^2 + tr(Sigma)/B holds with Sigma the covariance of per-sequence gradients and
B counted in sequences. With ragged padding a batch's loss weights each sequence by its token
count and the two-batch estimator is only approximately unbiased (a ratio of sums: a few percent
off on this data), so the noise-scale and histogram references use equal counts;
`language-model-ragged` (0 to 3 padded targets per sequence) checks the gradient-norm, Hessian and
sharpness probes, whose losses are token means over fixed data for any padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from torch import nn

from batchlab.probes import (
    Distance,
    Every,
    GradNorms,
    HessianTop,
    ProbeContext,
    ProbeRecord,
    ProbeSuite,
    Sharpness,
    UpdateSize,
    estimate_noise,
    gradient_histograms,
    probe_generator,
)
from batchlab.spec import spec_from_dict
from batchlab.tasks import Task
from batchlab.tasks.language_model import IGNORE_INDEX, LanguageModel
from batchlab.tasks.regression import Regression
from batchlab.trial import TrialState
from tests.conftest import SpecFactory
from tests.probes.test_engine_probes import IdleProbe, suite_module
from tests.probes.test_engine_probes import _metrics as eval_metrics
from tests.probes.test_engine_probes import _run as run_engine
from tests.probes.test_hessian import full_hessian_spectrum
from tests.workloads import bigram, tokens

Terms = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
N, FEATURES, OUTPUTS = 48, 4, 2  # regression: x [N, 4], y [N, 2]
CONTEXT, VOCAB = 5, 6  # language model: tokens [N, 5], logits [N, 5, 6]
SHARPNESS_ROWS, GRID = 16, 201  # the sharpness grid search: rows of data, points per axis


def regression_terms(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error of every target entry: [..., N * D] for outputs [..., N, D]."""
    return (out - y).square().flatten(start_dim=out.ndim - y.ndim)


def token_terms(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log p(target) = log sum_v exp(logit_v) - logit_target of every non-padding token:
    [..., K] for logits [..., N, T, V] (the logits here are small: no overflow guard)."""
    keep = y != IGNORE_INDEX
    target = torch.where(keep, y, 0).expand(*out.shape[:-1])
    nll = out.exp().sum(dim=-1).log() - out.gather(-1, target[..., None])[..., 0]
    return nll[..., keep]


def mean_of_terms(terms: Terms) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The reference loss: the plain mean of the hand-written terms."""

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return terms(out, y).mean(dim=-1)

    return loss


@dataclass(frozen=True)
class Case:
    """A task, its training data and a tiny float64 model, with the hand-written loss terms."""

    task: Task
    x: torch.Tensor
    y: torch.Tensor
    model: Callable[[int], nn.Module]
    terms: Terms

    @property
    def reference_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return mean_of_terms(self.terms)


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().double()


def _regression() -> Case:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, FEATURES, generator=g, dtype=torch.float64)
    teacher = torch.randn(FEATURES, OUTPUTS, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ teacher) + 0.3 * torch.randn(N, OUTPUTS, generator=g, dtype=torch.float64)

    def model(seed: int) -> nn.Module:
        return _seeded(
            seed,
            lambda: nn.Sequential(nn.Linear(FEATURES, 6), nn.Tanh(), nn.Linear(6, OUTPUTS)),
        )

    return Case(Regression(), x, y, model, regression_terms)


def _language_model(padding: str) -> Case:
    x, y, _, _ = tokens(n_train=N, n_test=1, context=CONTEXT, vocab=VOCAB)
    y = y.clone()
    g = torch.Generator().manual_seed(1)
    if padding != "none":
        for row in range(N):
            # "padded": 2 of 5 targets in every sequence, at random positions (equal token
            # counts); "ragged": 0 to 3 per sequence (unequal token counts).
            k = 2 if padding == "padded" else int(torch.randint(0, 4, (1,), generator=g))
            y[row, torch.randperm(CONTEXT, generator=g)[:k]] = IGNORE_INDEX
    counts = (y != IGNORE_INDEX).sum(dim=1)
    assert (int(counts.max()) > int(counts.min())) == (padding == "ragged")
    assert bool((counts < CONTEXT).any()) == (padding != "none")

    def model(seed: int) -> nn.Module:
        return _seeded(seed, lambda: bigram(input_shape=(CONTEXT,), num_classes=VOCAB, width=3))

    return Case(LanguageModel(), x, y, model, token_terms)


CASES: dict[str, Callable[[], Case]] = {
    "regression": _regression,
    "language-model": lambda: _language_model("none"),
    "language-model-padded": lambda: _language_model("padded"),
    "language-model-ragged": lambda: _language_model("ragged"),
}
EQUAL_UNITS = ["regression", "language-model", "language-model-padded"]
"""Cases whose rows all hold the same number of loss terms (see the module docstring)."""


@pytest.fixture(params=EQUAL_UNITS)
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]()


@pytest.fixture(params=list(CASES))
def any_case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]()


def _ctx(case: Case, model: nn.Module, *, step: int = 1) -> ProbeContext:
    return ProbeContext(
        model=model,
        loss_fn=case.task.mean_loss,
        x_train=case.x,
        y_train=case.y,
        step=step,
        batch_size=8,
        generator=probe_generator(0),
    )


def per_example_grads(
    model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], case: Case
) -> dict[str, torch.Tensor]:
    """name -> [N, *shape]: the reference loss's gradient on each row alone, one at a time."""
    params = dict(model.named_parameters())
    rows: list[tuple[torch.Tensor, ...]] = []
    for i in range(case.x.shape[0]):
        value = loss(model(case.x[i : i + 1]), case.y[i : i + 1])
        rows.append(torch.autograd.grad(value, list(params.values())))
    return {n: torch.stack([r[k] for r in rows]).double() for k, n in enumerate(params)}


def term_mean_grad(model: nn.Module, case: Case, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per-parameter norms of the batch gradient as the mean of every term's own gradient (one
    autograd call per squared error or per token), in `named_parameters` order."""
    params = list(model.parameters())
    terms = case.terms(model(x), y)
    total = [torch.zeros_like(p) for p in params]
    for k in range(terms.shape[0]):
        grads = torch.autograd.grad(terms[k], params, retain_graph=True)
        for acc, g in zip(total, grads, strict=True):
            acc.add_(g)
    return [float((acc / terms.shape[0]).norm()) for acc in total]


def _by_key(records: list[ProbeRecord], probe: str, step: int) -> dict[str, float]:
    return {r.key: r.value for r in records if r.probe == probe and r.step == step}


def test_reference_terms_are_the_tasks_loss(any_case: Case) -> None:
    """The hand-written terms average to `task.mean_loss`, so the references below measure the
    loss the engine trains (and hands to the probes)."""
    model = any_case.model(0)
    with torch.no_grad():
        out = model(any_case.x)
        ref = float(any_case.reference_loss(out, any_case.y))
        got = float(any_case.task.mean_loss(out, any_case.y))
        terms = any_case.terms(out, any_case.y)
    assert got == pytest.approx(ref, rel=1e-12)
    assert terms.shape[0] == int(any_case.task.units(any_case.y)) * (
        OUTPUTS if isinstance(any_case.task, Regression) else 1
    )


# --- noise scale ---------------------------------------------------------------------------


def _mean_and_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size))


def test_noise_scale_estimator_is_unbiased_for_every_task(case: Case) -> None:
    """tr(Sigma) and |G|^2 from the two-batch estimator (300 measurements of 4 draws of 4 rows)
    against the exact values from all 48 per-example gradients: Sigma is their (1/N) covariance
    and G their mean, total and per parameter tensor. Within 4 standard errors of the mean, and
    the band itself under 10% of the exact value so the check has teeth."""
    model = case.model(2)
    per_example = per_example_grads(model, case.reference_loss, case)
    trace = {n: float((g - g.mean(0)).square().sum() / N) for n, g in per_example.items()}
    g2 = {n: float(g.mean(0).square().sum()) for n, g in per_example.items()}
    gen = probe_generator(0)
    ests = [
        estimate_noise(
            model, case.task.mean_loss, case.x, case.y, small_batch=4, draws=4, generator=gen
        )
        for _ in range(300)
    ]
    for exact, got in (
        (math.fsum(trace.values()), [e.trace_total for e in ests]),
        (math.fsum(g2.values()), [e.g2_total for e in ests]),
    ):
        mean, se = _mean_and_se(got)
        assert abs(mean - exact) <= 4 * se
        assert se <= 0.1 * exact
    assert list(ests[0].names) == list(per_example)
    for i, name in enumerate(ests[0].names):
        mean, se = _mean_and_se([e.trace[i] for e in ests])
        assert abs(mean - trace[name]) <= 4 * se
        mean, se = _mean_and_se([e.g2[i] for e in ests])
        assert abs(mean - g2[name]) <= 4 * se


# --- gradient histograms -------------------------------------------------------------------


def _flat(grads: dict[str, torch.Tensor]) -> np.ndarray:
    return torch.cat([g.flatten(start_dim=1) for g in grads.values()], dim=1).numpy()


def test_histogram_counts_match_numpy_on_the_same_draws(case: Case) -> None:
    """Replay the documented sampling (per B, `draws` batches of torch.randint indices) and bin
    each draw's reference gradient (the hand-written loss on that batch) with numpy.histogram."""
    model = case.model(0)
    edges = np.linspace(-0.2, 0.2, 14)
    sizes, draws = (2, 8), 20
    got = gradient_histograms(
        model,
        case.task.mean_loss,
        case.x,
        case.y,
        batch_sizes=sizes,
        draws=draws,
        generator=probe_generator(5),
        edges=edges,
    )
    params = list(model.parameters())
    gen = probe_generator(5)
    for b in sizes:
        stack = np.stack(
            [
                torch.cat(
                    [
                        g.reshape(-1)
                        for g in torch.autograd.grad(
                            case.reference_loss(model(case.x[i]), case.y[i]), params
                        )
                    ]
                ).numpy()
                for i in (torch.randint(N, (b,), generator=gen) for _ in range(draws))
            ]
        )
        ref, _ = np.histogram(stack, bins=edges)
        np.testing.assert_array_equal(got.counts[b], ref)
        assert got.under[b] == int((stack < edges[0]).sum())
        assert got.over[b] == int((stack > edges[-1]).sum())
        assert got.under[b] + got.over[b] > 0 and ref.sum() > 0  # both paths are used
        np.testing.assert_allclose(
            got.variance[b], stack.var(axis=0, ddof=1), rtol=1e-9, atol=1e-15
        )


def test_histogram_variance_is_sigma_over_b(case: Case) -> None:
    """For batches of B i.i.d. rows, Var(g_B,j) = Sigma_jj / B, with Sigma_jj the variance of the
    48 per-example (per-sequence) gradients' component j."""
    model = case.model(0)
    sigma_diag = _flat(per_example_grads(model, case.reference_loss, case)).var(axis=0, ddof=0)
    got = gradient_histograms(
        model,
        case.task.mean_loss,
        case.x,
        case.y,
        batch_sizes=(1, 4, 16),
        draws=400,
        generator=probe_generator(1),
    )
    means = {b: float(got.variance[b].mean()) for b in (1, 4, 16)}
    assert means[1] > means[4] > means[16]
    for b, v in means.items():
        assert b * v == pytest.approx(float(sigma_diag.mean()), rel=0.10)


# --- gradient norms, update size, distance --------------------------------------------------


def test_grad_norms_update_size_and_distance_in_a_training_loop(any_case: Case) -> None:
    """Four SGD steps on `task.mean_loss`, every probe at every step: |g| per layer and in total
    is that of the mean of every loss term's own gradient (a token mean for a language model,
    however the padding falls), the update is lr * |g|, and the distance is |w_4 - w_0|."""
    case, lr, batch = any_case, 0.3, 8
    model = case.model(1)
    w0 = [p.detach().clone() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    suite = ProbeSuite(
        probes=[
            GradNorms(schedule=Every(1)),
            UpdateSize(schedule=Every(1)),
            Distance(schedule=Every(1)),
        ]
    )
    ctx = _ctx(case, model, step=0)
    suite.start(ctx)
    expected: dict[int, list[float]] = {}
    for step in range(1, 5):
        xb, yb = (
            case.x[(step - 1) * batch : step * batch],
            case.y[(step - 1) * batch : step * batch],
        )
        expected[step] = term_mean_grad(model, case, xb, yb)
        model.zero_grad(set_to_none=True)
        case.task.mean_loss(model(xb), yb).backward()  # type: ignore[no-untyped-call]
        suite.after_backward(ctx.at(step))
        with torch.no_grad():  # plain SGD, by hand
            for p in model.parameters():
                assert p.grad is not None
                p.sub_(lr * p.grad)
        suite.after_update(ctx.at(step))
    suite.finish(ctx.at(4))
    records = suite.drain()
    for step, layers in expected.items():
        norms = _by_key(records, "grad_norms", step)
        total = math.sqrt(math.fsum(v * v for v in layers))
        assert norms["total"] == pytest.approx(total, rel=1e-10)
        for name, ref in zip(names, layers, strict=True):
            assert norms[f"layer:{name}"] == pytest.approx(ref, rel=1e-10, abs=1e-15)
        update = _by_key(records, "update_size", step)
        assert update["total"] == pytest.approx(lr * total, rel=1e-10)
    distance = math.sqrt(
        math.fsum(
            float((p.detach() - w).square().sum())
            for p, w in zip(model.parameters(), w0, strict=True)
        )
    )
    assert _by_key(records, "distance", 4)["total"] == pytest.approx(distance, rel=1e-10)
    assert _by_key(records, "distance", 0)["total"] == 0.0


# --- Hessian --------------------------------------------------------------------------------


def test_hessian_top_eigenvalue_matches_the_dense_hessian(any_case: Case) -> None:
    """Power iteration through `task.mean_loss` on the probe's fixed subset of 40 rows against
    eigvalsh of the dense Hessian of the hand-written loss on the same rows."""
    case = any_case
    model = case.model(3)
    probe = HessianTop(schedule=Every(1), subset=40, max_iters=2000, tol=1e-12)
    records = {r.key: r.value for r in probe.after_update(_ctx(case, model, step=2))}
    assert probe._data is not None and isinstance(probe._data[0], torch.Tensor)
    x, y = probe._data[0], probe._data[1]
    assert x.shape[0] == 40
    eig = full_hessian_spectrum(model, x, y, loss_fn=case.reference_loss)
    assert float(eig[-1]) > abs(float(eig[0]))  # the top eigenvalue is also the dominant one
    assert records["total"] == pytest.approx(float(eig[-1]), rel=1e-6)
    assert 1 < records["iterations"] < 2000


# --- sharpness ------------------------------------------------------------------------------


def _lift(t: torch.Tensor, dims: int) -> torch.Tensor:
    """`t` with `dims` trailing singleton axes, to broadcast a grid over a model's output."""
    return t.reshape(*t.shape, *([1] * dims))


Grid = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`out(a, b, x)`: a two-parameter model's outputs for any grid shape of (a, b)."""


@dataclass(frozen=True)
class TwoParamCase:
    """A two-parameter model of the task's outputs, vectorized over any grid of (a, b)."""

    case: Case
    out: Grid


def _two_param(name: str) -> TwoParamCase:
    full = CASES[name]()
    case = replace(full, x=full.x[:SHARPNESS_ROWS], y=full.y[:SHARPNESS_ROWS])
    g = torch.Generator().manual_seed(7)
    if isinstance(case.task, Regression):
        u, v = (torch.randn(FEATURES, OUTPUTS, generator=g, dtype=torch.float64) for _ in "uv")

        def out(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            """(x u) b + (x v) sin 4a: outputs [..., N, 2]."""
            return _lift(b, 2) * (x @ u) + _lift(torch.sin(4 * a), 2) * (x @ v)

    else:
        m1, m2 = (torch.randn(VOCAB, VOCAB, generator=g, dtype=torch.float64) for _ in "12")

        def out(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            """b M1[x] + sin(4a) M2[x]: logits [..., N, T, V]."""
            return _lift(b, 3) * m1[x] + _lift(torch.sin(4 * a), 3) * m2[x]

    return TwoParamCase(case, out)


class TwoParam(nn.Module):
    def __init__(self, out: Grid, a: float, b: float) -> None:
        super().__init__()
        self.out = out
        self.w = nn.Parameter(torch.tensor([a, b], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.w[0], self.w[1], x)


def grid_phi(two: TwoParamCase, w: torch.Tensor, a_mat: torch.Tensor, eps: float) -> float:
    """phi by brute force: the hand-written loss at w + A z on a GRID x GRID grid over the box
    |z_i| <= eps (|(A^T w)_i| + 1), one grid row at a time."""
    x, y, loss = two.case.x, two.case.y, two.case.reference_loss
    bound = eps * ((a_mat.T @ w).abs() + 1)
    t = torch.linspace(-1.0, 1.0, GRID, dtype=torch.float64)
    f0 = float(loss(two.out(w[0], w[1], x), y))
    fmax = -math.inf
    for z0 in bound[0] * t:
        wz = w + torch.stack([z0.expand_as(t), bound[1] * t], dim=-1) @ a_mat.T  # (GRID, 2)
        fmax = max(fmax, float(loss(two.out(wz[:, 0], wz[:, 1], x), y).max()))
    return 100.0 * (fmax - f0) / (1.0 + f0)


@pytest.mark.parametrize("name", ["regression", "language-model", "language-model-ragged"])
@pytest.mark.parametrize(("a", "b", "eps"), [(0.6, 1.5, 0.1), (0.2, -0.7, 1e-3)])
def test_sharpness_matches_grid_search(name: str, a: float, b: float, eps: float) -> None:
    """The probe's phi in the full space (A = I) and in its random 2-d subspace (a rotation) of a
    2-parameter model against a grid search of the hand-written loss; its `loss` is f(w).

    Boxes small enough for L-BFGS-B's local search from z = 0 to reach the box's maximum: in a
    wide one (eps = 0.3, the ragged language model) it stops at a local maximum 2% below the
    grid's, as Keskar's method (a local ascent, not a global search) may."""
    two = _two_param(name)
    model = TwoParam(two.out, a, b)
    w = model.w.detach().clone()
    probe = Sharpness(schedule=Every(1), eps=eps, maxiter=10, subspace_dim=2, subset=SHARPNESS_ROWS)
    value = {r.key: r.value for r in probe.after_update(_ctx(two.case, model))}
    assert probe._a is not None
    eye = torch.eye(2, dtype=torch.float64)
    for key, a_mat, rel in (("full", eye, 1e-4), ("subspace", probe._a, 1e-3)):
        ref = grid_phi(two, w, a_mat, eps)
        assert value[key] >= ref - 1e-9  # the grid cannot beat the true max but by rounding
        assert value[key] == pytest.approx(ref, rel=rel), key
    loss0 = float(two.case.reference_loss(two.out(w[0], w[1], two.case.x), two.case.y))
    assert value["loss"] == pytest.approx(loss0, rel=1e-12)
    assert torch.equal(model.w.detach(), w)


# --- inside the engine ----------------------------------------------------------------------


def test_probes_leave_every_tasks_engine_trajectory_unchanged(
    task_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the engine, per task: every evaluation of a trial with the standard probes (which
    draw their own batches and run extra passes through `task.mean_loss`) is bit-identical to
    the same trial with an idle probe (the same probed code path, nothing measured), momentum
    on; and the distance probe's first record is exactly 0 and its last one positive."""
    monkeypatch.setitem(suite_module.PROBES, "idle", IdleProbe)
    base = {"batch_sizes": [16], "budget": {"epochs": 2}, "momentum": 0.9}
    idle, _, _ = run_engine(spec_from_dict(task_spec(**base, probes=["idle"])))
    probed, records, state = run_engine(spec_from_dict(task_spec(**base, probes="standard")))
    assert state == TrialState.COMPLETE
    assert eval_metrics(idle) == eval_metrics(probed)
    assert {r.probe for r in records} == {"grad_norms", "update_size", "distance", "noise_scale"}
    distance = sorted(
        (r.step, r.value) for r in records if r.probe == "distance" and r.key == "total"
    )
    assert distance[0] == (0, 0.0) and distance[-1][1] > 0
    assert all(math.isfinite(r.value) for r in records if r.probe != "noise_scale")
