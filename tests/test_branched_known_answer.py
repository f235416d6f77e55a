"""The branched critical batch size against an analytic answer, in its interior regime.

Linear regression (`widths = []`: y_hat = w.x + b) on Gaussian inputs x ~ N(0, diag(lam)), lam
log-spaced from 1 to 1/100 over d = 32 features, targets y = w*.x + eps, eps ~ N(0, s^2), s = 0.1,
under batchlab's MSE (no 1/2). With e = w - w* and the bias b (w*'s intercept is 0), the
population excess loss is Q = sum_i lam_i e_i^2 + b^2 (val loss = Q + s^2), the mean gradient is
2 (lam e, b), the Hessian 2 diag(lam, 1), and by the Gaussian fourth moment the per-example
gradient variances are 4 [lam_i (Q + s^2) + lam_i^2 e_i^2] (feature i) and 4 (Q - b^2 + s^2)
(bias). One SGD step at batch B and lr eta on fresh examples maps the expected squares exactly
(they close on themselves):

    E e_i'^2 = (1 - 2 eta lam_i)^2 e_i^2 + (4 eta^2 / B) [lam_i (Q + s^2) + lam_i^2 e_i^2]
    E b'^2   = (1 - 2 eta)^2 b^2       + (4 eta^2 / B) (Q - b^2 + s^2)

From the squares of each seed's stored reference checkpoint (the start of its branches), this
recursion, iterated step by step and read at the branches' evaluation points (linear in between,
as batchlab documents), gives the target (the reference batch's branch at the lr factor nearest
1, after `window` samples), the steps S(B) to it at every lr factor and the best factor's, then
our own least-squares hyperbola S = S_min + E_min / B (B_crit = E_min / S_min) and CBS_20 (where
E(B) / E(8) crosses 1.2, log-log between the straddling batch sizes). The spectrum makes the
slow directions take ~20 steps even at a large batch (S_min ~ 20); the answers, B_crit ~ 30-45
and CBS_20 ~ 13-17, lie inside the batch sizes measured (8 to 256). Evaluating only every
window / (8 B) samples costs S(8) ~ 3% (linear interpolation of a convex curve): the recursion,
read at the same points, includes it. The measurement reuses 8,192 training examples (a branch
at B = 8 sees about one epoch) and a validation split of 8,192, where the recursion has fresh
samples and the population loss: a float64 replay of one branch on batchlab's own stream matched
its recorded val losses to 4 digits, and those track Q + s^2 to ~1%.

Tolerances: the measurement is one SGD trajectory per seed (six seeds), the first passage of a
noisy loss, minimised over the lr grid (which favours a lucky factor). A Monte Carlo of the
protocol on fresh samples (outside the suite) put its median within ~5% of the recursion (no
bias to speak of) and its 95th percentile, with six seeds, at ~13% on one S(B), ~20% on B_crit
and ~30% on CBS_20 (CBS_20 is where a ratio growing by ~0.3 per e-fold of B crosses 1.2, so it
moves by about three times the relative error of E(b_min)). Over six data sets (data seeds 0-5)
this test saw at most 16% on S(B), 33% on B_crit and 31% on CBS_20; the bounds below (25%, 40%,
50%) leave that margin and still fail a hyperbola fit or a CBS rule off by a factor of 2, a target
set at the wrong batch or lr, or steps counted from the wrong start.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from batchlab import run_study
from batchlab.analysis.branched import branched_critical
from batchlab.engine import Checkpoint
from batchlab.store import Store
from tests.conftest import SpecFactory

D, KAPPA, NOISE = 32, 100.0, 0.1
LAM = np.geomspace(1.0, 1.0 / KAPPA, D)
REF_BATCH, LR = 32, 0.2
SIZES = (8, 16, 32, 64, 128, 256)
FACTORS = (1.41, 2.0, 2.83)
WINDOW, EVALS, REACH = 2048, 8, 4.0
SEEDS = (0, 1, 2, 3, 4, 5)

S_TOL = 0.25  # relative, on each S(B)
B_CRIT_TOL = 0.4
CBS20_TOL = 0.5


def excess_curve(e2: np.ndarray, b2: float, lr: float, batch: int, steps: int) -> np.ndarray:
    """Expected excess loss Q after 0..steps SGD steps from squares e2 (features) and b2 (bias)."""
    s2 = NOISE**2
    out = [float(LAM @ e2 + b2)]
    for _ in range(steps):
        q = out[-1]
        if q > 1e6:  # diverged (as batchlab's branch does): it never gets to any target
            out.append(math.inf)
            continue
        e2 = (1 - 2 * lr * LAM) ** 2 * e2 + 4 * lr**2 / batch * (LAM * (q + s2) + LAM**2 * e2)
        b2 = (1 - 2 * lr) ** 2 * b2 + 4 * lr**2 / batch * (q - b2 + s2)
        out.append(float(LAM @ e2 + b2))
    return np.asarray(out)


def every(batch: int) -> int:
    """Steps between a branch's evaluations: whole batches, about EVALS per window."""
    return max(1, round(WINDOW / (batch * EVALS)))


def steps_to(curve: np.ndarray, target: float, per: int) -> float:
    """First crossing of `target` by a curve evaluated every `per` steps, linear in between."""
    hits = np.nonzero(curve <= target)[0]
    if len(hits) == 0:
        return math.inf
    i = int(hits[0])
    if i == 0:
        return 0.0
    prev, cur = float(curve[i - 1]), float(curve[i])
    return per * (i - 1 + (target - prev) / (cur - prev))


def lr_at(batch: int, factor: float) -> float:
    return LR * math.sqrt(batch / REF_BATCH) * factor  # lr_scaling = "sqrt"


def analytic_steps(e2: np.ndarray, b2: float) -> dict[int, float]:
    """S(B) at the best lr factor, from one branch point's squared errors."""
    near_one = min(FACTORS, key=lambda f: abs(math.log(f)))
    target = excess_curve(e2, b2, lr_at(REF_BATCH, near_one), REF_BATCH, WINDOW // REF_BATCH)[-1]
    out = {}
    for b in SIZES:
        per = every(b)
        budget = per * math.ceil(REACH * WINDOW / (b * per))  # steps
        out[b] = min(
            steps_to(excess_curve(e2, b2, lr_at(b, f), b, budget)[::per], target, per)
            for f in FACTORS
        )
    return out


def hyperbola_b_crit(steps: dict[int, float]) -> float:
    sizes = sorted(steps)
    design = np.array([[1.0, 1.0 / b] for b in sizes])
    (s_min, e_min), *_ = np.linalg.lstsq(design, np.array([steps[b] for b in sizes]), rcond=None)
    return float(e_min / s_min)


def cbs20_of(steps: dict[int, float]) -> float:
    sizes = sorted(steps)
    ratio = [b * steps[b] / (sizes[0] * steps[sizes[0]]) for b in sizes]
    for lo, hi, r_lo, r_hi in zip(sizes, sizes[1:], ratio, ratio[1:], strict=False):
        if r_hi > 1.2:
            return float(lo * (hi / lo) ** (math.log(1.2 / r_lo) / math.log(r_hi / r_lo)))
    return math.inf


def write_data(path: Path, data_seed: int) -> np.ndarray:
    rng = np.random.default_rng(data_seed)
    w_star = rng.normal(size=D)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, D)) * np.sqrt(LAM)
        return x.astype(np.float32), (x @ w_star + NOISE * rng.normal(size=n)).astype(np.float32)

    (x_train, y_train), (x_test, y_test) = draw(16384), draw(256)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return w_star


@pytest.mark.slow  # ~30 s: six seeds x 2 points x 6 batch sizes x 3 lr factors
@pytest.mark.parametrize("data_seed", [0])  # 1-5 pass too (see the module docstring)
def test_branched_b_crit_and_cbs20_match_the_sgd_recursion_in_the_interior(
    make_spec: SpecFactory, tmp_path: Path, data_seed: int
) -> None:
    w_star = write_data(tmp_path / "lin.npz", data_seed)
    raw = make_spec(
        name="interior",
        dataset=f"npz:{tmp_path / 'lin.npz'}",
        dataset_args={},
        model_args={"widths": []},
        val_fraction=0.5,  # 8,192 to train on, 8,192 to validate on
        batch_sizes=[REF_BATCH],
        lrs=[LR],
        reference_batch_size=REF_BATCH,
        lr_scaling="sqrt",
        budget={"steps": 60},
        seeds=list(SEEDS),
        threads=1,
        branched={
            "batch_sizes": [b for b in SIZES if b != REF_BATCH],
            "points": 2,
            "first": 0.25,  # branch points at steps 15 and 60
            "window": WINDOW,
            "evals": EVALS,
            "reach": REACH,
            "lr_factors": list(FACTORS),
        },
    )
    study = run_study(raw, store=tmp_path / "s.db")
    result = branched_critical(study.trials)
    refs = [t for t in study.trials if t.params.get("branch") is None]
    assert len(result.points) == 2 and len(refs) == len(SEEDS)
    with Store(tmp_path / "s.db") as store:
        for p in result.points:
            per_seed = []
            for ref in refs:
                payload = store.snapshot(ref.trial_id, p.step)
                assert payload is not None
                state = Checkpoint.from_bytes(payload).model_state
                e = state["1.weight"].double().numpy()[0] - w_star
                per_seed.append(analytic_steps(e**2, float(state["1.bias"]) ** 2))
            expected = {b: float(np.mean([s[b] for s in per_seed])) for b in SIZES}
            b_crit, cbs20 = hyperbola_b_crit(expected), cbs20_of(expected)
            assert SIZES[0] < b_crit < SIZES[-1] and SIZES[0] < cbs20 < SIZES[-1]  # interior
            measured = {bb.batch_size: bb for bb in p.batches}
            assert sorted(measured) == list(SIZES) and all(bb.reached for bb in p.batches)
            for b, bb in measured.items():
                assert bb.lr == pytest.approx(lr_at(b, bb.lr_factor))
                assert bb.steps == pytest.approx(expected[b], rel=S_TOL), b
            assert p.b_crit is not None and p.cbs20 is not None, p.note
            assert p.b_crit == pytest.approx(b_crit, rel=B_CRIT_TOL)
            assert p.cbs20 == pytest.approx(cbs20, rel=CBS20_TOL)
