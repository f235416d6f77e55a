"""Make the PNGs under docs/figures/: one figure per study design, from real runs of its preset.

    .venv/bin/python docs/make_figures.py                 # every figure (~25 min on 2 cores)
    .venv/bin/python docs/make_figures.py ghost-bn quick  # just these

Each preset runs at its default, CPU-sized scale into a SQLite store (`--store`), and the
report's own matplotlib renderer draws the figure, exactly as `batchlab report` would. A study
already in the store with every trial finished is drawn as it is (so the figures can come from
the very runs behind the numbers in docs/designs.md: `batchlab run --preset NAME --store
designs.db`, then `--store designs.db` here); otherwise the preset is run, or resumed, into
the store. The PNGs are committed, so building the docs runs nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from batchlab import Study, load_study, presets, run_study
from batchlab.errors import StoreError
from batchlab.report.figure import Figure
from batchlab.report.figures import (
    accuracy,
    branched,
    curves,
    designs_budget,
    designs_schedules,
    designs_stability,
    designs_variants,
    probes_sharpness,
)
from batchlab.report.palette import palette_for
from batchlab.spec import load_spec

HERE = Path(__file__).resolve().parent
DPI = 72  # small files: the docs show them at page width

# preset -> the report figure that shows its design
FIGURES: dict[str, Figure[Any]] = {
    "quick": accuracy.FIGURE,
    "budget-controls": designs_budget.FIGURE,
    "optimizers": designs_variants.FIGURE,
    "accumulation": designs_variants.FIGURE,
    "batch-schedule": designs_schedules.FIGURE,
    "ghost-bn": designs_variants.FIGURE,
    "lr-grid": designs_stability.FIGURE,
    "sharpness": probes_sharpness.FIGURE,
    "lm-quick": accuracy.FIGURE,
    "lm-critical": curves.FIGURE,
    "resnet-quick": designs_variants.FIGURE,
    "branched": branched.FIGURE,
    "lm-branched": branched.FIGURE,
}


def finished_study(name: str, store: Path) -> Study | None:
    """The study `name` from `store` when it is there and every trial in it has finished."""
    try:
        study = load_study(name, store)
    except StoreError:
        return None
    done = study.trials and all(t.state.is_finished for t in study.trials)
    return study if done else None


def make_figure(preset: str, *, store: Path, out_dir: Path) -> Path:
    """Draw `preset`'s figure from `store` (running the preset first if needed) into
    `out_dir/<preset>.png`."""
    figure = FIGURES[preset]
    study = finished_study(preset, store)
    if study is None:
        study = run_study(load_spec(base=presets.get(preset).data), store=store)
    data = figure.extract([study])
    if data is None:
        raise SystemExit(f"{preset}: figure {figure.name!r} does not apply to this study")
    fig = figure.render_matplotlib(data, palette_for([study]))
    fig.suptitle(f"{figure.title} ({preset})", fontsize=13, fontweight="bold")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{preset}.png"
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("presets", nargs="*", help=f"default: all of {', '.join(FIGURES)}")
    parser.add_argument("--store", type=Path, default=Path("docs-figures.db"))
    parser.add_argument("--out", type=Path, default=HERE / "figures")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.presets) - set(FIGURES))
    if unknown:
        parser.error(f"no figure for {unknown}; choose from {', '.join(FIGURES)}")
    for preset in args.presets or list(FIGURES):
        start = time.perf_counter()
        path = make_figure(preset, store=args.store, out_dir=args.out)
        print(f"{path}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
