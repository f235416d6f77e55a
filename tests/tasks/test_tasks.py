"""Each task's loss and score against an independent reference, and how a task is chosen."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import r2_score

from batchlab.data.rows import TensorRows
from batchlab.engine import evaluate
from batchlab.errors import DataError
from batchlab.tasks import Arrays, infer_task, make_task, resolve_task
from batchlab.tasks.classification import Classification
from batchlab.tasks.language_model import IGNORE_INDEX, LanguageModel
from batchlab.tasks.regression import Regression
from tests.workloads import Huber, bigram, tokens


class Fixed(torch.nn.Module):
    """Returns the outputs it was given for the rows it is asked about (x holds row indices)."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out[x.long()]


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_r2_matches_scikit_learn_multioutput_for_any_chunking(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(50, 3, generator=g) * torch.tensor([1.0, 5.0, 0.1])
    pred = y + 0.7 * torch.randn(50, 3, generator=g)
    rows = torch.arange(50)
    loss, r2 = evaluate(Fixed(pred), TensorRows(rows, y), chunk, Regression())
    assert r2 == pytest.approx(r2_score(y.double().numpy(), pred.double().numpy()), rel=1e-9)
    assert loss == pytest.approx(float(((pred - y) ** 2).mean()), rel=1e-6)


def test_r2_of_the_mean_is_zero_and_of_the_truth_is_one() -> None:
    y = torch.linspace(-2, 3, 40)
    task = Regression()
    units = 40.0
    mean = torch.full_like(y, float(y.mean()))[:, None]
    assert task.score(task.score_stats(mean, y), units) == pytest.approx(0.0, abs=1e-12)
    assert task.score(task.score_stats(y[:, None], y), units) == pytest.approx(1.0)


def test_mae_loss_is_the_mean_absolute_error() -> None:
    y, pred = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([[1.0], [1.0], [0.0]])
    assert float(make_task("regression", {"loss": "mae"}).mean_loss(pred, y)) == pytest.approx(1)


def test_language_model_loss_is_a_mean_over_tokens_not_sequences() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 9, generator=g)
    y = torch.randint(0, 9, (4, 6), generator=g)
    y[0, 2:] = IGNORE_INDEX  # a short sequence: 2 real tokens
    y[3, 5:] = IGNORE_INDEX
    task = LanguageModel()
    keep = y != IGNORE_INDEX
    per_token = [
        -torch.log_softmax(logits[b, t], dim=0)[y[b, t]]
        for b in range(4)
        for t in range(6)
        if keep[b, t]
    ]
    brute = torch.stack(per_token).mean()
    assert float(task.mean_loss(logits, y)) == pytest.approx(float(brute), rel=1e-6)
    assert int(task.units(y)) == len(per_token)
    correct = sum(
        int(logits[b, t].argmax() == y[b, t]) for b in range(4) for t in range(6) if keep[b, t]
    )
    assert int(task.score_stats(logits, y)) == correct


def test_token_weighted_micro_batches_give_the_full_batch_gradient() -> None:
    """Re-splitting a batch into micro-batches of unequal token counts changes nothing."""
    x, y, _, _ = tokens(n_train=8, n_test=1, context=10, vocab=7)
    y = y.clone()
    y[:3, 4:] = IGNORE_INDEX  # the first micro-batch holds far fewer tokens than the second
    model = bigram(input_shape=(10,), num_classes=7)
    task = LanguageModel()

    def grads(splits: list[int]) -> list[torch.Tensor]:
        model.zero_grad()
        total = task.units(y)
        for xm, ym in zip(torch.split(x, splits), torch.split(y, splits), strict=True):
            task.micro_loss(model(xm), ym, total).backward()  # type: ignore[no-untyped-call]
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole = grads([8])
    for splits in ([4, 4], [3, 5], [1, 2, 5]):
        for a, b in zip(whole, grads(splits), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # Averaging per-micro-batch means (the bug batchlab check looks for) would not match.
    model.zero_grad()
    for xm, ym in zip(torch.split(x, 4), torch.split(y, 4), strict=True):
        (F.cross_entropy(model(xm).flatten(0, 1), ym.flatten(), ignore_index=-100) / 2).backward()  # type: ignore[no-untyped-call]
    naive = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(whole, naive, strict=True))


def test_classification_evaluation_is_cross_entropy_and_accuracy() -> None:
    g = torch.Generator().manual_seed(2)
    logits, y = torch.randn(30, 4, generator=g), torch.randint(0, 4, (30,), generator=g)
    loss, acc = evaluate(Fixed(logits), TensorRows(torch.arange(30), y), 8, Classification())
    assert loss == pytest.approx(float(F.cross_entropy(logits.double(), y)), rel=1e-6)
    assert acc == int((logits.argmax(1) == y).sum()) / 30


def as_arrays(*arrays: object) -> Arrays:
    a, b, c, d = (torch.as_tensor(np.asarray(a)) for a in arrays)
    return a, b, c, d


def test_the_task_is_inferred_from_the_data() -> None:
    x = np.zeros((4, 3), dtype=np.float32)
    assert infer_task(as_arrays(x, [0, 1, 2, 1], x, [1, 0, 0, 2])) == "classification"
    assert infer_task(as_arrays(x, [0.0, 1.0, 2.0, 1.0], x, [1.0] * 4)) == "classification"
    assert infer_task(as_arrays(x, [0.5, 1.0, 2.0, 1.0], x, [1.0] * 4)) == "regression"
    assert infer_task(tokens(n_train=4, n_test=2)) == "language-model"


def test_named_tasks_and_errors() -> None:
    arrays = tokens(n_train=4, n_test=2)
    assert isinstance(resolve_task("regression", {}, arrays), Regression)
    assert isinstance(resolve_task("tests.workloads:huber", {"tol": 0.1}, arrays), Huber)
    with pytest.raises(DataError, match="task: unknown task 'regresion'"):
        make_task("regresion")
    with pytest.raises(DataError, match="task_args"):
        make_task("classification", {"smoothing": 0.1})
    with pytest.raises(DataError, match="task_args.loss"):
        make_task("regression", {"loss": "huber"})
    with pytest.raises(DataError, match="not a batchlab.tasks.Task"):
        make_task("tests.workloads:tokens")


def test_a_language_model_needs_token_logits() -> None:
    with pytest.raises(DataError, match=r"logits \[B, T, V\]"):
        LanguageModel().mean_loss(torch.randn(2, 5), torch.zeros(2, 3, dtype=torch.int64))
    assert math.isclose(
        float(LanguageModel().mean_loss(torch.zeros(1, 1, 4), torch.tensor([[2]]))),
        math.log(4),
        rel_tol=1e-6,
    )
