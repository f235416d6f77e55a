"""A figure is a name, a title, a pure data extraction and two renderers of that data.

Adding a figure to the report is one small module that builds a `Figure` and passes it to
`build_report(..., extra_figures=[...])` (or appends it to `DEFAULT_FIGURES` for every report).
`extract` returns None when the figure does not apply (e.g. a heatmap over one learning rate).
A figure that names the score or the loss reads their names from the studies' `TaskInfo`: in its
data (`extract` gets the studies) and, through `text`, in its title and caption.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from matplotlib.figure import Figure as MplFigure

from batchlab.report._types import StudyLike
from batchlab.report.palette import Palette

if TYPE_CHECKING:
    from batchlab.tasks.base import TaskInfo

D = TypeVar("D")

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True, kw_only=True)
class Figure(Generic[D]):
    """One figure of the report.

    `name` is a slug (lowercase letters, digits, `-`, `_`): it names `figures/<name>.png` and the
    chart's element id. `description` is the caption: what is plotted, with units, and which
    statistic a band shows. `render_plotly` returns a `plotly.graph_objects.Figure`.
    """

    name: str
    title: str
    description: str
    extract: Callable[[Sequence[StudyLike]], D | None]
    render_plotly: Callable[[D, Palette], Any]
    render_matplotlib: Callable[[D, Palette], MplFigure]
    text: Callable[[TaskInfo], tuple[str, str]] | None = None
    """For a figure that names the score or loss: its (title, description) for a task; `title`
    and `description` are then its classification ones."""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"figure name {self.name!r}: use lowercase letters, digits, - and _")

    def text_for(self, task: TaskInfo) -> tuple[str, str]:
        """The title and description to show for studies of `task`."""
        return (self.title, self.description) if self.text is None else self.text(task)
