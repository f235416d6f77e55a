"""The task protocol: what a batch's targets are, how the loss is computed, what is reported.

A task turns a model's output and a batch's targets into three things the engine needs:

- `mean_loss(out, y)`: the loss to differentiate, a mean over the task's *unit* (an example, or a
  token for a language model);
- `units(y)`: how many units `y` holds, so micro-batches of unequal size are weighted by their
  share of the batch (gradient accumulation is exact for any split, token-weighted for tokens);
- `score_stats(out, y)` and `score(stats, units)`: an additive statistic and the metric it gives
  (accuracy, R^2, token accuracy), higher is better, so a split's score is exact however it is
  chunked.

The engine stores the loss as `*_loss` and the score as `*_acc` (the column names predate tasks);
`loss_label` and `score_label` say what they are in reports.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from batchlab.errors import DataError

if TYPE_CHECKING:  # torch is imported by the methods' callers; `TaskInfo` must not need it
    import torch

    from batchlab.batch import Inputs

    Arrays = tuple[Inputs, torch.Tensor, Inputs, torch.Tensor]
else:
    Arrays = tuple
"""(x_train, y_train, x_test, y_test) as a loader returns them; inputs may be dicts of tensors."""


def floats(x: Inputs) -> Inputs:
    """Float inputs for a tensor; a dict batch's entries keep their dtypes (ids, masks...)."""
    return x if isinstance(x, dict) else x.float()


class Task(ABC):
    """What a batch's targets are, the loss and the reported metric (see the module docstring)."""

    name: ClassVar[str]
    loss_label: ClassVar[str] = "loss"
    """The loss's name in reports, e.g. "cross-entropy" or "MSE"."""
    score_label: ClassVar[str] = "score"
    """The score's name in reports, e.g. "accuracy" or "R²"."""
    score_is_fraction: ClassVar[bool] = True
    """Whether the score lies in [0, 1] (shown as a percentage) or is unbounded below (R^2)."""
    unit: ClassVar[str] = "example"
    """What `units` counts: "example", or "token" for a language model."""
    index_label: ClassVar[str | None] = None
    """What the output size is one more than the largest of, in errors: "labels", "token ids"
    (None: the output size is not an index, as a regression's target dimensions)."""

    def __init__(self, **options: Any) -> None:
        if options:
            raise DataError(
                f"task_args: {self.name} takes no options, not {sorted(options)}; remove them"
            )

    def prepare(self, arrays: Arrays, *, where: str) -> Arrays:
        """Check and convert a loader's arrays for this task (dtypes, shapes); one-line errors."""
        return arrays

    def cast(self, x: Inputs, y: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        """A batch collated from a map-style Dataset's items, in this task's dtypes."""
        prepared = self.prepare((x, y, x, y), where="dataset item")
        return prepared[0], prepared[1]

    def forward(self, model: torch.nn.Module, x: Inputs) -> torch.Tensor:
        """The model's output for a batch: `model(x)`, or `model(**x)` for a dict batch (a
        Hugging Face style output gives its `logits`)."""
        from batchlab import batch

        return batch.call(model, x)

    @abstractmethod
    def output_size(self, arrays: Arrays) -> int:
        """What a model's output layer must produce per position: classes, targets or vocab."""

    def check_output(self, out: torch.Tensor, y: torch.Tensor, *, size: int) -> None:
        """A one-line DataError (naming `model:`) when a model's output for targets `y` does not
        fit this task and its output `size` (classes, vocabulary); the preflight calls it once,
        before any trial, so a model of another output width is not trained silently."""
        return None  # by default every output the loss accepts fits

    @abstractmethod
    def mean_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of a batch, averaged over its units (differentiable)."""

    def sum_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss summed over units (for evaluation in chunks); float64 accumulates it."""
        return self.mean_loss(out, y) * self.units(y)

    def micro_loss(
        self, out: torch.Tensor, y: torch.Tensor, total: int | torch.Tensor
    ) -> torch.Tensor:
        """This (micro-)batch's share of a batch's mean loss: its summed loss over the whole
        batch's `total` units. Summed over micro-batches, the gradient is the full batch's mean
        gradient for any split, also one of unequal unit counts."""
        return self.sum_loss(out, y) / total

    def units(self, y: torch.Tensor) -> int | torch.Tensor:
        """How many units `y` holds: examples by default (a tensor where counting needs the
        device, so the hot loop never syncs)."""
        return int(y.shape[0])

    @abstractmethod
    def score_stats(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """An additive statistic of a batch (summed over chunks and batches) for `score`."""

    @abstractmethod
    def score(self, stats: torch.Tensor, units: float) -> float:
        """The score of everything whose `score_stats` summed to `stats` (`units` units)."""

    def describe(self) -> TaskInfo:
        """The task's labels, for reports and exports (stored with every trial)."""
        return TaskInfo(
            task=self.name,
            loss_label=self.loss_label,
            score_label=self.score_label,
            score_is_fraction=self.score_is_fraction,
            unit=self.unit,
        )


@dataclass(frozen=True, kw_only=True)
class TaskInfo:
    """What a stored study's `*_loss` and `*_acc` columns mean: plain data, no code.

    Each trial stores it in its provenance, so the report, `recommend` and `critical` label a
    study's metrics without rebuilding its task.
    """

    task: str = "classification"
    loss_label: str = "cross-entropy"
    score_label: str = "accuracy"
    score_is_fraction: bool = True
    unit: str = "example"
    tokens_per_sample: float = 1.0
    """Units per example in the training set (tokens per sequence for a language model)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TaskInfo:
        """From stored provenance; unknown keys are ignored and missing ones default, so a study
        stored before tasks existed reads as classification."""
        if not isinstance(d, Mapping):
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def loss_name(self) -> str:
        """E.g. "loss (MSE)", "loss (cross-entropy per token)"."""
        return f"loss ({self.loss_label})"

    def score_text(self, value: float) -> str:
        """A score for prose: "91.2%" for a fraction, "0.873" for R^2."""
        if value != value:  # NaN
            return "n/a"
        return f"{100 * value:.1f}%" if self.score_is_fraction else f"{value:.3f}"

    # How tables, sentences and axes name and format the stored values. Every report and CLI
    # output reads these, so classification (a study stored before tasks) keeps its old text.

    @classmethod
    def of(cls, study: object) -> TaskInfo:
        """A study's task (its `task` attribute, as `batchlab.study.Study` has); classification
        for a study-like object without one."""
        task = getattr(study, "task", None)
        return task if isinstance(task, TaskInfo) else cls()

    @property
    def score_title(self) -> str:
        """The score's name at the start of a title: "Accuracy", "R²", "Token accuracy"."""
        return self.score_label[:1].upper() + self.score_label[1:]

    @property
    def score_short(self) -> str:
        """The score's name in a narrow table header: "acc", "R²", "token acc"."""
        return self.score_label.replace("accuracy", "acc")

    @property
    def score_scale(self) -> float:
        """Display units per stored unit: 100 for a fraction (shown in %), else 1."""
        return 100.0 if self.score_is_fraction else 1.0

    @property
    def score_unit(self) -> str:
        """The score's display unit: "%" for a fraction, "" for a plain number such as R²."""
        return "%" if self.score_is_fraction else ""

    @property
    def score_format(self) -> str:
        """Format spec of a score in display units: ".2f" (88.38 %) or ".3f" (0.884)."""
        return ".2f" if self.score_is_fraction else ".3f"

    @property
    def score_cell_format(self) -> str:
        """The same for a crowded grid cell: ".1f" (88.4) or ".2f" (0.88)."""
        return ".1f" if self.score_is_fraction else ".2f"

    def score_axis(self, what: str = "test", *, short: bool = False) -> str:
        """An axis or column label with its unit: "test accuracy (%)", "test acc (%)",
        "test R²" ("accuracy (%)" for `what` "")."""
        name = self.score_short if short else self.score_label
        name = f"{what} {name}" if what else name
        return f"{name} ({self.score_unit})" if self.score_unit else name

    def format_score(self, value: float, *, space: bool = False, scaled: bool = False) -> str:
        """A score for tables and sentences: "88.38%" ("88.38 %" with `space`) or "0.884";
        `scaled`: `value` is already in display units (a plotted value)."""
        text = format(value if scaled else value * self.score_scale, self.score_format)
        if not self.score_unit:
            return text
        return f"{text} {self.score_unit}" if space else f"{text}{self.score_unit}"

    def format_score_diff(self, value: float, *, unit: str = "") -> str:
        """A difference or spread of scores: for a fraction in percentage points, "1.23" or,
        with `unit` ("pp", "points"), "1.23 pp"; otherwise in the score's own units, "0.012"."""
        text = format(value * self.score_scale, self.score_format)
        return f"{text} {unit}" if unit and self.score_is_fraction else text

    def format_score_mean_std(self, mean: float, std: float) -> str:
        """ "88.38% ± 1.23" or "0.884 ± 0.012"; no ± part when `std` is NaN (one seed)."""
        text = self.format_score(mean)
        return text if math.isnan(std) else f"{text} ± {self.format_score_diff(std)}"

    @property
    def loss_in_nats(self) -> bool:
        """Whether the loss is a cross-entropy (natural log, so measured in nats)."""
        return "cross-entropy" in self.loss_label

    @property
    def loss_unit(self) -> str:
        """The loss with its unit, for axes: "cross-entropy, nats", "MSE"."""
        return f"{self.loss_label}, nats" if self.loss_in_nats else self.loss_label

    @property
    def loss_short_unit(self) -> str:
        """The same for a narrow label: "nats" for a cross-entropy, else the loss ("MSE")."""
        return "nats" if self.loss_in_nats else self.loss_label

    @property
    def shows_loss(self) -> bool:
        """Whether tables and summaries give the test loss next to the score: for every task but
        classification, whose output predates tasks and whose accuracy stands on its own (R²
        hides the error's scale, token accuracy a language model's usual reading)."""
        return self.task != "classification"

    @property
    def has_perplexity(self) -> bool:
        """A cross-entropy per token (a language model), usually read as perplexity exp(loss)."""
        return self.unit == "token" and self.loss_in_nats

    def loss_text(self, loss: float) -> str:
        """A test loss for a summary sentence, when the task `shows_loss`: "test loss (MSE)
        0.1901", with a language model's perplexity appended; "" otherwise or for NaN."""
        if not self.shows_loss or math.isnan(loss):
            return ""
        text = f"test {self.loss_name} {loss:.4g}"
        return f"{text}, perplexity {self.perplexity(loss):.4g}" if self.has_perplexity else text

    @staticmethod
    def perplexity(loss: float) -> float:
        """exp(loss): the effective number of equally likely next tokens (inf past overflow)."""
        try:
            return math.exp(loss)
        except OverflowError:
            return math.inf


def check_rows(arrays: Arrays, *, where: str) -> None:
    """Each split has as many targets as inputs, and none is empty."""
    from batchlab import batch

    x_train, y_train, x_test, y_test = arrays
    for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        try:
            n = batch.rows(xs)
        except ValueError as err:
            raise DataError(f"{where}: x_{split}: {err}") from None
        if n != ys.shape[0]:
            raise DataError(f"{where}: x_{split} has {n} rows but y_{split} has {ys.shape[0]}")
        if n == 0:
            raise DataError(f"{where}: the {split} split is empty")
