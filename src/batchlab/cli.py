"""The `batchlab` command line. Every user error is one line on stderr and exit status 2."""

from __future__ import annotations

import functools
import json
import math
import shlex
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from batchlab import presets
from batchlab._version import __version__
from batchlab.analysis.grid import bands, cells
from batchlab.errors import BatchlabError, SpecError
from batchlab.fmt import lr_text
from batchlab.plugins import only_hooks
from batchlab.results import DEFAULT_STORE, Study, load_study
from batchlab.spec import load_spec, spec_from_dict
from batchlab.trial import TrialState

# torch, matplotlib and the report are imported inside the commands that use them, so
# `--help`, `--version`, `ls` and `show` import none of them (tests/test_cli_start.py).

F = TypeVar("F", bound=Callable[..., Any])


def _store_is_data(command: F) -> F:
    """A command that reads a store imports no code the store names (`plugins.only_hooks`)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with only_hooks():
            return command(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


TRUST_STORE_OPTION = click.option(
    "--trust-store",
    is_flag=True,
    help="Import the package.module:function hooks the stored spec names (only for a store"
    " you made: a store is data, and by default names no code to run).",
)


def _out() -> Console:
    """Console for tables: the terminal's width, or a wide page when piped to a file."""
    return Console() if sys.stdout.isatty() else Console(width=160)


STORE_OPTION = click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_STORE,
    show_default=True,
    help="SQLite file holding the results.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batchlab")
def cli() -> None:
    """batchlab: what batch size (and learning rate) should I train with, and why?

    Runs controlled batch-size studies on a PyTorch model and dataset, stores every result in
    SQLite, and shows what changed. Start with `batchlab run --preset quick`.
    """


@cli.command()
@click.argument("study_file", required=False, type=click.Path(path_type=Path))
@click.option("--preset", "preset_name", metavar="NAME", help="Start from a built-in study.")
@STORE_OPTION
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a spec field (TOML value), e.g. --set budget.epochs=3 --set seeds=[0,1].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with dataset files (looked in before $BATCHLAB_DATA and system paths).",
)
@click.option(
    "--scale",
    type=click.Choice(["small", "full"]),
    help="The file's or preset's CPU-sized [small] or paper-scale [full] version.",
)
@click.option(
    "--report",
    "report_dir",
    is_flag=False,
    flag_value="__default__",
    default=None,
    metavar="[DIR]",
    help="Write the HTML report at the end (default DIR: reports/NAME).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--log",
    "log_to",
    multiple=True,
    metavar="NAME[=DEST]",
    help="Also send each trial to a tracker: mlflow[=TRACKING_URI], tensorboard[=LOGDIR]"
    " (default runs), wandb[=PROJECT]. Repeatable; each needs its extra, e.g."
    " pip install 'batchlab[mlflow]'.",
)
@click.option(
    "--adaptive",
    is_flag=True,
    help="Successive halving: stop configurations clearly behind at rungs (docs/adaptive.md);"
    " the spec's [adaptive] table, if any, sets the rule.",
)
@click.option(
    "--workers",
    metavar="N|auto",
    help="Run trials in N worker processes; auto: one per core, small batches packed"
    " single-threaded, large ones given every core (docs/performance.md).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    help="Where trials run: this machine (default) or a Ray cluster (pip install"
    " 'batchlab[ray]'; docs/ray.md).",
)
@click.option(
    "--address",
    "ray_address",
    metavar="ADDR",
    help="With --executor ray: the cluster to join (e.g. 10.0.0.1:6379); default: a local one.",
)
@click.option("--name", "study_name", metavar="NAME", help="Run the study under this name.")
@click.option(
    "--force",
    is_flag=True,
    help="The store holds this study with another spec: delete its trials and run it afresh.",
)
@click.option(
    "--retry-failed", is_flag=True, help="Run the study's FAILED trials again, from scratch."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the trial grid (ids, steps, samples, a calibrated time estimate) after the"
    " preflight, and batchlab check's verdict when accumulate > 1; train nothing, write"
    " nothing to the store. Exit 1 when the check finds a batch not equivalent.",
)
def run(
    study_file: Path | None,
    preset_name: str | None,
    scale: str | None,
    store: Path,
    overrides: tuple[str, ...],
    data_dir: Path | None,
    report_dir: str | None,
    quiet: bool,
    log_to: tuple[str, ...],
    adaptive: bool,
    workers: str | None,
    executor: str | None,
    ray_address: str | None,
    study_name: str | None,
    force: bool,
    retry_failed: bool,
    dry_run: bool,
) -> None:
    """Run (or resume) a study from STUDY_FILE (TOML) and/or a preset, plus overrides.

    Trials are batch_sizes x lrs x seeds. Finished trials are skipped on a rerun; a trial
    interrupted mid-way continues from its last epoch checkpoint.
    """
    if study_file is None and preset_name is None:
        raise SpecError(
            "run: give a study file (STUDY.toml) or --preset NAME (see batchlab presets)"
        )
    base = presets.get(preset_name).data if preset_name else None
    execution = [f"workers={workers}"] if workers is not None else []
    execution += [f"executor={executor}"] if executor is not None else []
    execution += [f"ray_address={json.dumps(ray_address)}"] if ray_address is not None else []
    execution += [f"name={json.dumps(study_name)}"] if study_name is not None else []
    spec = load_spec(study_file, base=base, overrides=[*overrides, *execution], scale=scale)
    if adaptive and spec.adaptive is None:
        spec = spec_from_dict({**spec.to_toml_dict(), "adaptive": {}}, source="--adaptive")
    from batchlab.nodynamo import skip_dynamo_import
    from batchlab.progress import LineReporter, RichReporter
    from batchlab.study import run_study
    from batchlab.trackers import make_trackers

    skip_dynamo_import()  # this process compiles no optimizer code
    if dry_run:
        _dry_run(spec, data_dir)
        return
    trackers = make_trackers(log_to)  # a missing extra stops here, before the store is touched
    # Bars on a terminal; a line per finished trial for a log (stdout not a terminal: a file,
    # CI, nohup), so it is never silent for minutes. Either knows what runs, for Ctrl-C.
    reporter: RichReporter | LineReporter
    if quiet or not sys.stdout.isatty():
        reporter = LineReporter(store, quiet=quiet)
    else:
        reporter = RichReporter(Console(stderr=True))
    try:
        study = run_study(
            spec,
            store=store,
            data_dir=data_dir,
            reporter=reporter,
            trackers=trackers,
            force=force,
            retry_failed=retry_failed,
            notify=lambda line: click.echo(line, err=True),
        )
    except KeyboardInterrupt:
        _interrupted(reporter.running, spec.name)
    console_out = _out()
    _print_table(study, console_out)
    _print_bands(study, console_out)
    _print_pruned(study, console_out)
    _print_failures(study)
    counts = _state_counts(study)
    click.echo(f"study '{study.name}': {counts}; results in {store.resolve()}")
    click.echo(
        f"  see them: batchlab show {shlex.quote(study.name)} --store {shlex.quote(str(store))}"
    )
    if report_dir is not None:
        from batchlab.report import build_report  # matplotlib: only for --report

        out = _report_dir(study.name, None if report_dir == "__default__" else Path(report_dir))
        page = build_report(study, out)
        click.echo(f"  report: {page.resolve()}")


def _interrupted(running: list[Any], name: str) -> NoReturn:
    """Ctrl-C during `run`: which trials stopped, that a rerun resumes them; exit 130."""
    from batchlab.progress import trial_label

    if running:
        which = "; ".join(f"{trial_label(t)} ({t.trial_id})" for t in running[:4])
        more = f" and {len(running) - 4} more" if len(running) > 4 else ""
        click.echo(f"interrupted: {which}{more} stopped mid-trial", err=True)
        click.echo(
            "  the same command resumes them from their last checkpoint (finished trials are kept)",
            err=True,
        )
    else:
        click.echo(
            f"interrupted study {name!r} between trials; the same command continues it", err=True
        )
    sys.exit(130)


def _dry_run(spec: Any, data_dir: Path | None) -> None:
    """`run --dry-run`: the preflight, the grid and its estimated time; the store untouched."""
    from batchlab.dryrun import dry_run
    from batchlab.prepared import prepare
    from batchlab.study import accumulation_check_result

    if spec.threads is not None:
        from torch import set_num_threads

        set_num_threads(spec.threads)
    prepared = prepare(spec, data_dir=data_dir)
    plan = dry_run(prepared, check=accumulation_check_result(prepared))
    for line in plan.lines():
        click.echo(line)
    if not plan.ok:
        sys.exit(1)


@cli.command("check")
@click.argument("study_file", required=False, type=click.Path(path_type=Path))
@click.option("--preset", "preset_name", metavar="NAME", help="Check a built-in study.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a spec field (TOML value), as for run.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with dataset files.",
)
@click.option("--scale", type=click.Choice(["small", "full"]), help="As for run.")
@click.option(
    "--accumulate",
    "factors",
    metavar="K,K",
    help="Accumulation factors to check besides the study's accumulate.  [default: 2,4]",
)
@click.option(
    "--shards",
    default="2,4",
    show_default=True,
    metavar="W,W",
    help="Data-parallel workers to simulate (empty: none).",
)
@click.option("--steps", default=2, show_default=True, help="Updates before the 2nd comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def check_cmd(
    study_file: Path | None,
    preset_name: str | None,
    overrides: tuple[str, ...],
    data_dir: Path | None,
    scale: str | None,
    factors: str | None,
    shards: str,
    steps: int,
    as_json: bool,
) -> None:
    """Prove that the study's large batch is the batch it means: one batch of B against k
    micro-batches accumulated as the engine does and against W data-parallel shards averaged
    as DDP does, on the study's model, task and data (docs/check.md).

    Names what breaks equivalence (batch statistics, a loss that is not a mean over the task's
    unit, randomness, modules in eval mode). Exit 0: every batch size equivalent; 1: one is
    not; 2: bad input.
    """
    from batchlab.check import check

    if study_file is None and preset_name is None:
        raise SpecError(
            "check: give a study file (STUDY.toml) or --preset NAME (see batchlab presets)"
        )
    if steps < 0:
        raise SpecError(f"--steps {steps}: need 0 or more updates")
    ks = None if factors is None else _int_list(factors, "--accumulate")
    ws = _int_list(shards, "--shards")
    for flag, values in (("--accumulate", ks or []), ("--shards", ws)):
        if any(v < 1 for v in values):
            raise SpecError(f"{flag} {values}: need positive integers, e.g. 2,4")
    base = presets.get(preset_name).data if preset_name else None
    spec = load_spec(study_file, base=base, overrides=list(overrides), scale=scale)
    result = check(spec, data_dir=data_dir, factors=ks, workers=ws, steps=steps)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
    else:
        for line in result.lines():
            click.echo(line)
    sys.exit(result.exit_code)


@cli.command("presets")
@click.argument("name", required=False)
def list_presets(name: str | None) -> None:
    """List the built-in studies with a one-line description and expected CPU time; with
    NAME, print that preset's full TOML (a starting point for your own study file)."""
    if name is not None:
        click.echo(presets.source(name), nl=False)
        return
    table = Table(title="batchlab presets")
    table.add_column("preset", style="bold")
    table.add_column("description")
    table.add_column("CPU time (2 cores)", justify="right")
    for p in presets.all_presets():
        table.add_row(p.name, p.description, p.cpu_time)
    _out().print(table)


@cli.command("ls")
@STORE_OPTION
@_store_is_data
def list_studies(store: Path) -> None:
    """List the studies in a store with their trial counts per state."""
    from batchlab.store import Store

    with Store.open_existing(store) as s:
        rows = s.study_summary()
    table = Table(title=f"studies in {store}")
    table.add_column("study", style="bold")
    table.add_column("trials", justify="right")
    table.add_column("states")
    for r in rows:
        states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(r["states"].items()))
        table.add_row(r["name"], str(sum(r["states"].values())), states)
    _out().print(table)


def _state_counts(study: Study) -> str:
    counts: dict[str, int] = {}
    for t in study.trials:
        counts[t.state.value.lower()] = counts.get(t.state.value.lower(), 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def _mean_std_text(values: list[float]) -> str:
    """ "0.1901 ± 0.033", "0.1901" with one value, "—" with none (a loss, a perplexity)."""
    mean, std = _mean_std(values)
    if math.isnan(mean):
        return "—"
    return f"{mean:.4g}" + ("" if math.isnan(std) else f" ± {std:.2g}")


def _print_table(study: Study, console: Console) -> None:
    """One row per (batch size, lr): seeds, final test score mean +- std, time, states; for a
    task other than classification also the test loss (and a language model's perplexity).
    A branched design's branch trials are not rows: one line counts them."""
    task = study.task
    with_loss = task.shows_loss
    groups: dict[tuple[str, int, bool, float], list[Any]] = {}
    branches = [t for t in study.trials if t.params.get("branch")]
    for t in study.trials:
        if t.params.get("branch"):  # short runs from a reference's state: `batchlab critical`
            continue
        key = (str(t.params.get("variant", "")), t.batch_size, bool(t.params.get("control")))
        groups.setdefault((*key, t.lr_base), []).append(t)
    has_variants = any(k[0] for k in groups)
    title = f"study {study.name} (budget: {study.spec.budget.kind} = {study.spec.budget.value:g})"
    if any(k[2] for k in groups):
        title += "\ncontrol = a run given the updates of the smallest batch size"
    table = Table(title=title)
    columns = [
        ("variant", "left"),
        ("batch size", "right"),
        ("lr (used)", "right"),
        ("seeds", "right"),
        (f"test {task.score_short} (mean ± std)", "right"),
        *([(f"test {task.loss_name}", "right")] if with_loss else []),
        *([("test perplexity", "right")] if with_loss and task.has_perplexity else []),
        ("updates", "right"),
        ("train time (s)", "right"),
        ("peak mem (MiB)", "right"),
        ("state", "left"),
    ]
    for col, just in columns if has_variants else columns[1:]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for (variant, b, control, _), trials in sorted(groups.items()):
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.last is not None]
        acc_mean, acc_std = _mean_std([t.last.test_acc for t in done])
        time_mean, _ = _mean_std([t.last.train_time_s for t in done])
        mem_mean, _ = _mean_std([t.last.peak_mem_bytes / 2**20 for t in done])
        steps = sorted({t.last.step for t in done})
        states = ", ".join(
            f"{sum(t.state == s for t in trials)} {s.value.lower()}"
            for s in TrialState
            if any(t.state == s for t in trials)
        )
        acc = "—" if math.isnan(acc_mean) else task.format_score_mean_std(acc_mean, acc_std)
        losses = [t.last.test_loss for t in done]
        extra = [_mean_std_text(losses)] if with_loss else []
        if with_loss and task.has_perplexity:
            extra.append(_mean_std_text([task.perplexity(v) for v in losses]))
        cells_ = [variant] if has_variants else []
        table.add_row(
            *cells_,
            f"{b} (control)" if control else str(b),
            lr_text(trials[0].lr),
            str(len(trials)),
            acc,
            *extra,
            "/".join(str(s) for s in steps) or "—",
            "—" if math.isnan(time_mean) else f"{time_mean:.1f}",
            "—" if math.isnan(mem_mean) else f"{mem_mean:.0f}",
            states,
        )
    console.print(table)
    if branches:
        click.echo(f"{len(branches)} branch trials: see `batchlab critical {study.name}`")


def _print_bands(study: Study, console: Console) -> None:
    """For an lr x batch grid: the usable lr band and the best lr at each batch size."""
    grid_bands = bands(cells(study.trials))
    if len({t.lr_base for t in study.trials}) < 2 or not grid_bands:
        return
    table = Table(
        title="usable learning rates (converged: finite loss, final train loss below the initial)"
    )
    task = study.task
    score = f"test {task.score_short}"
    by = "test: no val split" if any(b.selected_on == "test" for b in grid_bands) else "val"
    for col in ("variant", "batch size", "usable lrs", "band", f"best lr (by {by})", score):
        table.add_column(col, justify="right")
    for b in grid_bands:
        band = "—" if b.lo is None else f"{b.lo:.3g} .. {b.hi:.3g}"
        best = "—" if b.best_lr is None else f"{b.best_lr:.3g}"
        acc = "—" if math.isnan(b.best_test_acc) else task.format_score(b.best_test_acc)
        table.add_row(b.variant or "—", str(b.batch_size), f"{b.usable}/{b.tried}", band, best, acc)
    console.print(table)


def _print_pruned(study: Study, console: Console) -> None:
    """Configurations an adaptive sweep stopped: at which rung and epoch, and how far behind."""
    from batchlab.adaptive import describe_rule, pruned_configs

    metric = study.spec.adaptive.metric if study.spec.adaptive is not None else "val_acc"
    rows = pruned_configs(study.trials, metric)
    if not rows:
        return
    title = "stopped by the adaptive rule"
    if study.spec.adaptive is not None:
        title += f"\n{describe_rule(study.spec.adaptive)}"
    table = Table(title=title)
    has_variants = any(r.variant for r in rows)
    columns = ("variant", "batch size", "lr (used)", "seeds", "rung", "epoch", metric)
    for col in columns if has_variants else columns[1:]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            *([r.variant] if has_variants else []),
            str(r.batch_size),
            lr_text(r.lr),
            ",".join(str(s) for s in r.seeds),
            "—" if r.rung is None else str(r.rung),
            f"{r.epoch:.3g}",
            f"{r.value:.4f}",
        )
    console.print(table)


def _print_failures(study: Study) -> None:
    """One line per FAILED trial: which, and the exception that ended it (its type and message,
    the last line of the stored traceback), so a failure is seen without export or report."""
    for t in study.trials:
        if t.state != TrialState.FAILED:
            continue
        lines = [line.strip() for line in (t.error or "").splitlines() if line.strip()]
        variant = f" {t.params['variant']}" if t.params.get("variant") else ""
        control = " (control)" if t.params.get("control") else ""
        click.echo(
            f"failed: B={t.batch_size}{control} lr={lr_text(t.lr)} seed={t.seed}{variant}"
            f" ({t.trial_id}): {lines[-1] if lines else 'no error recorded'}"
        )


@cli.command()
@click.argument("name")
@STORE_OPTION
@_store_is_data
def show(name: str, store: Path) -> None:
    """Show a study as a table: batch size, lr, seeds, final test score, time, state.

    The score is the task's: accuracy, R² for regression, token accuracy (with the test loss
    and perplexity) for a language model.

    A study with several learning rates also gets the usable lr band per batch size.
    """
    study = load_study(name, store)
    console = _out()
    _print_table(study, console)
    _print_bands(study, console)
    _print_pruned(study, console)
    _print_failures(study)


@cli.command()
@click.argument("name")
@STORE_OPTION
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (default: stdout).",
)
@click.option(
    "--probes", is_flag=True, help="Export the probe records (one row per value) instead."
)
@_store_is_data
def export(name: str, store: Path, fmt: str, out: Path | None, probes: bool) -> None:
    """Export one row per trial per evaluation (or per probe value) as CSV or JSON."""
    study = load_study(name, store)
    df = study.probes_dataframe() if probes else study.to_dataframe()
    if fmt == "csv":
        text = df.to_csv(index=False)
    else:
        text = json.dumps(json.loads(df.to_json(orient="records")), indent=1) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        _write_out(out, text)
        click.echo(f"wrote {len(df)} rows to {out}", err=True)


def _write_out(out: Path, text: str) -> None:
    """Write an --out file, or a one-line error naming it and the fix (nothing half-written)."""
    if not out.parent.is_dir():
        raise SpecError(f"--out {out}: folder {out.parent} does not exist; create it first")
    part = out.with_name(f".{out.name}.part")
    try:
        part.write_text(text, encoding="utf-8")
        part.replace(out)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise SpecError(
            f"--out {out}: cannot write ({err.strerror or err}); free space or choose another path"
        ) from None


def _report_dir(name: str, out: Path | None) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if safe.startswith("."):  # "..", ".x": a folder inside reports/, never above or hidden
        safe = "_" + safe
    return out if out is not None else Path("reports") / safe


@cli.command()
@click.argument("name")
@STORE_OPTION
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Folder (default reports/NAME)."
)
@click.option("--no-png", is_flag=True, help="Skip the matplotlib PNGs (faster).")
@_store_is_data
def report(name: str, store: Path, out: Path | None, no_png: bool) -> None:
    """Write a self-contained HTML report (index.html, figures/*.png, summary.json)."""
    study = load_study(name, store)
    from batchlab.report import build_report

    page = build_report(study, _report_dir(name, out), png=not no_png)
    click.echo(f"report: {page.resolve()}")


@cli.command()
@click.argument("names", nargs=-1, required=True)
@STORE_OPTION
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/compare"),
    show_default=True,
)
@click.option("--no-png", is_flag=True, help="Skip the matplotlib PNGs (faster).")
@_store_is_data
def compare(names: tuple[str, ...], store: Path, out: Path, no_png: bool) -> None:
    """Overlay several studies (e.g. with and without lr scaling) in the same figures."""
    studies = [load_study(n, store) for n in names]
    from batchlab.report import build_comparison

    page = build_comparison(studies, out, png=not no_png)
    click.echo(f"comparison: {page.resolve()}")


@cli.command()
@click.argument("name")
@STORE_OPTION
@click.option(
    "--a", "trial_a", metavar="TRIAL", help="Trial id (or prefix); default: smallest batch."
)
@click.option(
    "--b", "trial_b", metavar="TRIAL", help="Trial id (or prefix); default: largest batch."
)
@click.option("--points", default=31, show_default=True, help="Points along alpha in [-1, 2].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write a CSV.")
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Dataset folder."
)
@TRUST_STORE_OPTION
def interpolate(
    name: str,
    store: Path,
    trial_a: str | None,
    trial_b: str | None,
    points: int,
    out: Path | None,
    data_dir: Path | None,
    trust_store: bool,
) -> None:
    """Loss and accuracy along w(alpha) = alpha * w_a + (1 - alpha) * w_b, alpha in [-1, 2].

    alpha = 1 is trial A, alpha = 0 is trial B (e.g. large vs small batch from the same init).
    """
    from batchlab.study import interpolate_trials

    study = load_study(name, store, trust_hooks=trust_store)
    table = interpolate_trials(study, trial_a, trial_b, points=points, data_dir=data_dir)
    console = _out()
    rich_table = Table(title=f"{name}: A = {table.attrs['a']}, B = {table.attrs['b']}")
    for col in table.columns:
        rich_table.add_column(col, justify="right")
    for row in table.itertuples(index=False):
        rich_table.add_row(*(f"{v:.4f}" for v in row))
    console.print(rich_table)
    if out is not None:
        _write_out(out, table.to_csv(index=False))
        click.echo(f"wrote {out}", err=True)


TARGET_OPTION = click.option(
    "--target",
    "target_text",
    default=None,
    metavar="METRIC=VALUE[*best]",
    help="What reaching the target means: val_acc=0.9 (absolute) or val_acc=0.98*best"
    " (fraction of the best; for losses best / fraction). METRIC: val_acc, test_acc, val_loss,"
    " test_loss; *_acc is the task's score (accuracy, R², token accuracy). A test metric"
    " chooses on test. [default: val_acc=0.98*best; test_acc=0.98*best for a study without a"
    " validation split]",
)


@cli.command("recommend")
@click.argument("name")
@STORE_OPTION
@TARGET_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the recommendation as JSON.")
@_store_is_data
def recommend_cmd(name: str, store: Path, target_text: str | None, as_json: bool) -> None:
    """A short answer: best batch size and lr, fastest to the target, critical batch size,
    the time/score (accuracy, R², ...) Pareto front, and the assumptions behind them.

    Every choice is made on the validation split and the test score is reported for the chosen
    cell; a study without one chooses on test, and the answer says so first."""
    from batchlab.analysis.critical import Target
    from batchlab.analysis.recommend import recommend

    target = None if target_text is None else Target.parse(target_text)
    study = load_study(name, store)
    rec = recommend(study, target, probes=study.probes_dataframe())  # None: the default
    if as_json:
        click.echo(json.dumps(rec.to_dict(), indent=1, default=str))
        return
    console = _out()
    console.print(f"[bold]Recommendation for study {name}[/bold]")
    for line in rec.lines():
        console.print(line, markup=False, highlight=False)


def _branched_critical(study: Study, *, as_json: bool) -> None:
    """`batchlab critical` for a branched study: one row per branch point."""
    from batchlab.analysis.branched import branched_critical

    info = study.task
    per = info.tokens_per_sample if info.unit != "example" else None
    result = branched_critical(study.trials, study.probes_dataframe(), tokens_per_sample=per)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1, default=str))
        return
    unit = "tokens" if per else "samples"
    table = Table(
        title=f"{study.name}: critical batch size over training (branched; reference batch"
        f" {result.reference_batch_size}, {len(result.seeds)} seed{'s' * (len(result.seeds) != 1)})"
    )
    for col in ("point", f"at ({unit})", "target val loss", "B_crit", "95% CI", "CBS_20"):
        table.add_column(col, justify="right")
    for col in ("95% CI ", "B_simple", "note"):
        table.add_column(col, justify="right" if col != "note" else "left")

    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:.3g}"

    def ci(i: Any) -> str:
        if i is None:
            return "—"
        return f"{i.lo:.3g}–{i.hi:.3g}" if math.isfinite(i.hi) else f"{i.lo:.3g}–∞"

    for pt in result.points:
        cbs = f"> {pt.cbs20_above}" if pt.cbs20_above is not None else num(pt.cbs20)
        table.add_row(
            str(pt.point),
            f"{pt.tokens if pt.tokens is not None else pt.samples:,}",
            f"{pt.target:.4g}",
            num(pt.b_crit),
            ci(pt.b_crit_ci),
            cbs,
            ci(pt.cbs20_ci),
            num(pt.b_simple),
            pt.note,
        )
    _out().print(table)
    click.echo(
        "B_crit: McCandlish's S(B) = S_min + E_min / B fitted at each point; CBS_20: where the"
        " samples to the target exceed perfect scaling from the smallest batch by 20% (Zhang"
        " et al.); targets are validation losses."
    )
    if per:
        click.echo(
            f"Batch sizes are in sequences of {per:g} tokens: times {per:g} for tokens per batch"
            " (--json has both)."
        )
    if result.ci_note:
        click.echo(result.ci_note)
    if result.failed:
        click.echo(f"{len(result.failed)} branch trials did not complete (see batchlab show).")


@cli.command("schedule")
@click.argument("name")
@STORE_OPTION
@click.option(
    "--validate",
    is_flag=True,
    help="Also run the schedule against the constant reference batch and the constant largest"
    " batch at equal samples (study NAME-validation, same store) and report steps, samples and"
    " time to the reference's final validation loss.",
)
@_store_is_data
def schedule_cmd(name: str, store: Path, validate: bool) -> None:
    """A batch-size warmup from a branched study: at each branch point, the largest power of
    two at or below the measured CBS_20, as TOML lines (`batch_sizes`, `batch_schedule`) a
    study can use."""
    from batchlab.analysis.branched import (
        branched_critical,
        budget_passes,
        is_branch,
        validation_rows,
        validation_spec,
        warmup_schedule,
    )

    study = load_study(name, store)
    info = study.task
    per = info.tokens_per_sample if info.unit != "example" else None
    result = branched_critical(study.trials, study.probes_dataframe(), tokens_per_sample=per)
    refs = [t for t in study.trials if not is_branch(t)]
    with_epochs = [e for t in refs for e in t.evals if e.epoch > 0]
    if not with_epochs:
        raise click.ClickException(f"study {name!r}: no reference evaluation after training yet")
    n_train = round(with_epochs[0].samples / with_epochs[0].epoch)
    budget = study.spec.budget
    epochs = budget_passes(budget, n_train)
    if epochs is None:
        raise SpecError(
            f"schedule: a batch_schedule steps at epoch boundaries, and study {name!r} has a"
            f" {budget.kind} budget of {budget.value:g}; run the branched study with an epochs"
            f" budget or a samples budget that is a multiple of its {n_train} training examples"
        )
    warmup = warmup_schedule(
        result, n_train=n_train, epochs=epochs, state_epochs=budget.epochs is None
    )
    click.echo(warmup.to_toml(study=name), nl=False)
    if not validate:
        return
    largest = max(
        (b.batch_size for p in result.points for b in p.batches if b.reached),
        default=warmup.start,
    )
    from batchlab.progress import LineReporter
    from batchlab.study import run_study

    stored = study.spec.to_toml_dict()
    hooks = study.spec.hooks()
    if hooks:  # a store is data: what it names is not run from here
        raise SpecError(
            f"schedule --validate: study {name!r} runs your code ({sorted(hooks)[0]}); run the"
            " validation from your own spec file with the batch_schedule above"
        )
    if not refs or not all(t.state is TrialState.COMPLETE for t in refs):
        raise SpecError(f"schedule --validate: study {name!r}: its reference runs did not complete")
    targets = {t.seed: t.evals[-1].val_loss for t in refs}
    spec = validation_spec(stored, warmup, largest)
    checked = run_study(spec, store=store, reporter=LineReporter(store))
    rows = validation_rows(checked.trials, targets)
    small = next((r for r in rows if r.variant == f"constant {warmup.start}"), None)
    table = Table(
        title=f"{spec['name']}: equal samples; target: each seed's reference final val loss"
    )
    cols = ("run", "final val loss", "updates", "vs constant", "reached", "steps to it")
    for col in (*cols, "samples to it", "time to it (s)"):
        table.add_column(col, justify="right")
    for row in rows:
        fewer = (
            f"{row.total_steps / small.total_steps - 1:+.0%}"
            if small is not None and row is not small and small.total_steps > 0
            else "—"
        )
        table.add_row(
            row.variant,
            f"{row.final_val_loss:.4g}",
            f"{row.total_steps:,.0f}",
            fewer if row is not small else "(reference)",
            f"{row.reached}/{row.seeds}",
            f"{row.steps:,.0f}" if row.reached else "—",
            f"{row.samples:,.0f}" if row.reached else "—",
            f"{row.time_s:.3g}" if row.reached else "—",
        )
    _out().print(table)
    click.echo(
        f"'vs constant': updates against the constant batch {warmup.start} (negative: fewer)."
        " A run reaches the target when its validation loss first falls to its seed's"
        " reference final loss (interpolated between evaluations)."
    )


@cli.command("critical")
@click.argument("name")
@STORE_OPTION
@TARGET_OPTION
@click.option("--variant", default=None, help="Variant to fit (needed when a study has several).")
@click.option("--boot", default=1000, show_default=True, help="Bootstrap resamples (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print the fit as JSON.")
@_store_is_data
def critical_cmd(
    name: str, store: Path, target_text: str | None, variant: str | None, boot: int, as_json: bool
) -> None:
    """Critical batch size: fit S(B) = S_min + E_min / B to the steps each batch size needs to
    reach the target (McCandlish et al. 2018); B_crit = E_min / S_min. Also where perfect
    scaling ends (steps 20% over S(B_0) B_0 / B) and maximal data parallelism begins (a doubling
    saves < 10% of the steps; Shallue et al. 2019). Each batch size's lr is chosen on the
    target's split (validation by default)."""
    from batchlab.analysis.critical import (
        CriticalBatchError,
        CriticalFit,
        NotEnoughBatchSizes,
        Target,
        critical_batch_size,
        noise_scale_summary,
    )
    from batchlab.analysis.regimes import Regimes, scaling_regimes, untuned_batch_sizes

    target = None if target_text is None else Target.parse(target_text)
    study = load_study(name, store)
    if any(t.params.get("branch") for t in study.trials):  # a branched design: B_crit(t)
        _branched_critical(study, as_json=as_json)
        return
    fit: CriticalFit | NotEnoughBatchSizes
    try:
        fit = critical_batch_size(study.trials, target, variant=variant, n_boot=boot)
    except NotEnoughBatchSizes as err:  # the points are shown, B_crit is not: too few to fit
        fit = err
    chosen = [t for t in study.trials if str(t.params.get("variant", "")) == fit.variant]
    noise = noise_scale_summary(study.probes_dataframe(), chosen)
    note = fit.selection.note(study.task, "The lr at each batch size is chosen")
    regimes: Regimes | None = None
    regimes_reason = ""
    try:  # Shallue et al.'s regimes, from the same points (and the same MIN_BATCH_SIZES)
        regimes = scaling_regimes(fit.points)
    except CriticalBatchError as err:
        regimes_reason = str(err).removeprefix("scaling regimes: ")
    untuned = untuned_batch_sizes(fit.points, [t for t in chosen if not t.params.get("control")])
    info = study.task  # a language model's batch is also B x tokens per sequence
    per_sample = info.tokens_per_sample if info.unit != "example" else None
    if as_json:
        payload = {
            **fit.to_dict(tokens_per_sample=per_sample),
            "selection": {**fit.selection.to_dict(), "note": note},
            "noise_scale": None if noise is None else noise.to_dict(),
            "regimes": None if regimes is None else regimes.to_dict(),
            "regimes_reason": regimes_reason,
            "lr_at_grid_edge": untuned,
        }
        click.echo(json.dumps(payload, indent=1, default=str))
        return
    if note:
        click.echo(note)
    table = Table(title=f"{name}: steps to {fit.target.describe()} (= {fit.threshold:.4g})")
    cols: tuple[str, ...] = ("batch size", "lr", "seeds", "steps S", "samples E")
    cols += ("S / perfect", "fit S")
    if per_sample is not None:
        cols = (*cols[:5], f"{info.unit}s E", *cols[5:])
    for col in (*cols, "time (s)"):
        table.add_column(col, justify="right")
    # S / perfect scaling S(B_0) B_0 / B from the smallest batch size B_0 reaching the target
    e0 = fit.points[0].steps * fit.points[0].batch_size if fit.points else 0.0
    for p in fit.points:
        tokens = () if per_sample is None else (f"{p.samples * per_sample:,.0f}",)
        table.add_row(
            str(p.batch_size),
            lr_text(p.lr),
            str(p.seeds),
            f"{p.steps:.1f}",
            f"{p.samples:.0f}",
            *tokens,
            f"{p.steps * p.batch_size / e0:.2f}" if e0 > 0 else "—",
            f"{fit.steps_at(p.batch_size):.1f}" if isinstance(fit, CriticalFit) else "—",
            f"{p.time_s:.3g}",
        )
    for b in fit.unreached:
        fitted = f"{fit.steps_at(b):.1f}" if isinstance(fit, CriticalFit) else "—"
        dashes = ("—",) * (2 if per_sample is None else 3)
        table.add_row(str(b), "—", "—", "not reached", *dashes, fitted, "—")
    console = _out()
    console.print(table)
    if regimes is None:
        click.echo(f"Scaling regimes: {regimes_reason}")
    else:
        for line in regimes.lines():
            click.echo(line)
        if untuned:
            click.echo(
                "The regimes assume an lr tuned per batch size (Shallue et al. 2019); the best lr"
                f" is the smallest or largest tried at B = {', '.join(map(str, untuned))}, so"
                " steps there may be overstated: widen the lr grid there."
            )
    if isinstance(fit, NotEnoughBatchSizes):
        click.echo("B_crit: " + str(fit).removeprefix("critical batch size: "))
        if noise is not None:
            per = ", ".join(f"B={b}: {v:.4g}" for b, v in noise.per_batch.items())
            click.echo(f"B_simple (median, late training) = {noise.overall:.4g} ({per})")
        return
    ci = fit.b_crit_ci
    click.echo(f"S_min = {fit.s_min:.4g} steps, E_min = {fit.e_min:.4g} samples, R² = {fit.r2:.3f}")
    click.echo(
        f"B_crit = E_min / S_min = {fit.b_crit:.4g}"
        + (f" (95% CI {ci.lo:.4g} .. {ci.hi:.4g}, {fit.n_boot} resamples)" if ci else "")
        + (f"; {fit.ci_note}" if fit.ci_note else "")
    )
    if per_sample is not None:  # the same fit in tokens: B sequences are B x per_sample tokens
        k, unit = per_sample, f"{info.unit}s"
        click.echo(
            f"B_crit in {unit} = {fit.b_crit:.4g} x {k:g} {unit} per sample ="
            f" {fit.b_crit * k:,.0f} {unit} per batch"
            + (f" (95% CI {ci.lo * k:,.0f} .. {ci.hi * k:,.0f})" if ci else "")
            + f"; E_min = {fit.e_min * k:,.0f} {unit}"
        )
    if fit.caveat():
        click.echo(fit.caveat())
    if noise is not None:
        per = ", ".join(f"B={b}: {v:.4g}" for b, v in noise.per_batch.items())
        click.echo(f"B_simple (median, late training) = {noise.overall:.4g} ({per})")
        click.echo(
            f"B_simple / B_crit = {noise.overall / fit.b_crit:.2g}"
            " (McCandlish et al. expect the same order of magnitude)"
        )


def _int_list(text: str, flag: str = "--batch-sizes") -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise SpecError(f"{flag} {text!r}: use comma-separated integers, e.g. 8,32,128") from None


@cli.command("profile")
@click.option(
    "--study",
    "study_name",
    metavar="NAME",
    help="Profile a stored study's model on its data (and show it in its report).",
)
@click.option("--model", help="mlp, cnn or package.module:fn.  [default: mlp]")
@click.option("--dataset", help="e.g. fashion-mnist, mnist1d.  [default: synthetic]")
@click.option("--model-args", metavar="JSON", help="e.g. '{\"widths\": [64]}'")
@click.option("--dataset-args", metavar="JSON")
@click.option("--device", help="cpu, cuda, cuda:1 or auto.  [default: the study's, else cpu]")
@click.option(
    "--batch-sizes",
    help="Comma-separated batch sizes to time.  [default: the study's, else 8,16,...,1024]",
)
@click.option("--margin", default=0.2, show_default=True, help="Memory safety margin (fraction).")
@click.option("--memory-cap", type=float, help="CPU memory cap in GiB (default: half of free).")
@click.option("--threads", type=int, help="CPU threads for torch (default: torch's own).")
@STORE_OPTION
@click.option("--no-save", is_flag=True, help="Do not store the profile.")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@TRUST_STORE_OPTION
def profile_cmd(
    study_name: str | None,
    model: str | None,
    dataset: str | None,
    model_args: str | None,
    dataset_args: str | None,
    device: str | None,
    batch_sizes: str | None,
    margin: float,
    memory_cap: float | None,
    threads: int | None,
    store: Path,
    no_save: bool,
    as_json: bool,
    trust_store: bool,
) -> None:
    """Throughput, peak memory and fraction of the matmul peak per batch size; where
    throughput stops improving; and the largest batch that fits with a safety margin.

    The profile is stored (in --store, unless --no-save), and the report of every study of the
    same model on the same data shows the newest one.
    """
    from torch import set_num_threads as torch_threads

    from batchlab.profile import DEFAULT_BATCH_SIZES, profile_hardware
    from batchlab.store import Store, profile_subject

    base: dict[str, Any] = {
        "model": "mlp",
        "dataset": "synthetic",
        "device": "cpu",
        "model_args": {},
        "dataset_args": {},
        "batch_sizes": list(DEFAULT_BATCH_SIZES),
        "task": None,
        "task_args": {},
    }
    hooks = {ref for ref in (model, dataset) if ref}  # typed here, by the user
    if study_name is not None:
        stored = load_study(study_name, store=store, trust_hooks=trust_store)
        hooks |= stored.allowed_hooks  # none unless --trust-store: a store is data
        spec = stored.spec
        base = {
            "model": spec.model,
            "dataset": spec.dataset,
            "device": spec.device,
            "model_args": spec.model_args,
            "dataset_args": spec.dataset_args,
            "batch_sizes": list(spec.batch_sizes),
            "task": spec.task,
            "task_args": spec.task_args,
        }
    given = {
        "model": model,
        "dataset": dataset,
        "device": device,
        "model_args": None if model_args is None else _json_object(model_args, "--model-args"),
        "dataset_args": (
            None if dataset_args is None else _json_object(dataset_args, "--dataset-args")
        ),
        "batch_sizes": None if batch_sizes is None else _int_list(batch_sizes),
    }
    what = base | {k: v for k, v in given.items() if v is not None}
    if threads is not None:
        if threads <= 0:
            raise SpecError(f"--threads {threads}: need a positive number")
        torch_threads(threads)
    with only_hooks(hooks):
        prof = profile_hardware(
            model=what["model"],
            dataset=what["dataset"],
            model_args=what["model_args"],
            dataset_args=what["dataset_args"],
            device=what["device"],
            batch_sizes=what["batch_sizes"],
            margin=margin,
            memory_cap_bytes=None if memory_cap is None else int(memory_cap * 2**30),
            task=what["task"],
            task_args=what["task_args"],
        )
    if not no_save:
        subject = profile_subject(
            model=what["model"],
            model_args=what["model_args"],
            dataset=what["dataset"],
            dataset_args=what["dataset_args"],
        )
        with Store(store) as s:
            s.put_profile(subject, prof.device, prof.to_dict())
    if as_json:
        click.echo(json.dumps(prof.to_dict(), indent=1))
        return
    table = Table(title=f"profile: {what['model']} on {what['dataset']} ({prof.device})")
    for col in ("batch size", "samples/s", "step (ms)", "peak mem (MiB)", "GFLOP/s", "of peak"):
        table.add_column(col, justify="right")
    for r in prof.rows:
        table.add_row(
            str(r.batch_size) + (" (knee)" if prof.marks_knee(r.batch_size) else ""),
            f"{r.samples_per_s:,.0f}",
            f"{1e3 * r.step_time_s:.3g}",
            f"{r.peak_mem_bytes / 2**20:.0f}",
            f"{r.flops_per_s / 1e9:.3g}",
            f"{100 * r.fraction_of_peak:.2g}%",
        )
    console = _out()
    console.print(table)
    for line in prof.lines():
        console.print(line, markup=False, highlight=False)
    if not no_save:
        console.print(f"stored in {store}", markup=False, highlight=False)


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"{flag}: not valid JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise SpecError(f'{flag}: need a JSON object, e.g. {{"widths": [64]}}')
    return value


@cli.command("suggest")
@click.option("--model", default="mlp", show_default=True, help="mlp, cnn or package.module:fn.")
@click.option("--dataset", required=True, help="e.g. fashion-mnist, mnist1d, synthetic.")
@click.option("--model-args", default="{}", metavar="JSON", help="e.g. '{\"widths\": [64]}'")
@click.option("--dataset-args", default="{}", metavar="JSON")
@click.option("--train-subset", type=int, help="Keep this many training examples.")
@click.option("--lr", default=0.05, show_default=True, help="SGD lr at --batch-size.")
@click.option("--batch-size", default=32, show_default=True, help="Small batch of the short run.")
@click.option("--momentum", default=0.0, show_default=True)
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Study spec of the full sweep this replaces (default: the seed-sweep preset's grid).",
)
@click.option(
    "--method",
    default="noise",
    show_default=True,
    help="noise (B_crit ~ the noise scale of a short run) or branched (B_crit by branching).",
)
@click.option(
    "--budget-fraction",
    type=float,
    help="Of the sweep's compute (default: 0.05 for noise, 0.10 for branched).",
)
@click.option("--task", help="e.g. language-model (default: the dataset's own).")
@click.option("--max-seconds", default=300.0, show_default=True, help="Short-run time limit.")
@click.option("--draws", default=16, show_default=True, help="Small batches per measurement.")
@click.option("--measurements", default=40, show_default=True, help="Noise-scale measurements.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--threads", type=int, help="CPU threads for torch (default: torch's own).")
@click.option("--seed", default=0, show_default=True)
@click.option("--verify", is_flag=True, help="Run short trials at the suggestion and neighbours.")
@STORE_OPTION
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Dataset folder."
)
@click.option("--json", "as_json", is_flag=True, help="Print the suggestion as JSON.")
def suggest_cmd(
    model: str,
    dataset: str,
    model_args: str,
    dataset_args: str,
    train_subset: int | None,
    lr: float,
    batch_size: int,
    momentum: float,
    reference: Path | None,
    method: str,
    budget_fraction: float | None,
    task: str | None,
    max_seconds: float,
    draws: int,
    measurements: int,
    device: str,
    threads: int | None,
    seed: int,
    verify: bool,
    store: Path,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Suggest a batch size and lr range before sweeping: a short run measuring the gradient
    noise scale (or, with --method branched, a short run and its branches measuring B_crit)
    plus a hardware profile, within a small fraction of the full sweep's compute."""
    from torch import set_num_threads as torch_threads

    from batchlab.suggest import METHODS, load_reference, suggest

    if method not in METHODS:  # before loading anything: one line, exit 2
        raise SpecError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if threads is not None:
        if threads <= 0:
            raise SpecError(f"--threads {threads}: need a positive number")
        torch_threads(threads)
    ref_spec, ref_source = load_reference(reference)
    sug = suggest(
        model=model,
        dataset=dataset,
        model_args=_json_object(model_args, "--model-args"),
        dataset_args=_json_object(dataset_args, "--dataset-args"),
        train_subset=train_subset,
        data_dir=data_dir,
        task=task,
        lr=lr,
        batch_size=batch_size,
        momentum=momentum,
        reference=ref_spec,
        reference_source=ref_source,
        method=method,
        budget_fraction=budget_fraction,
        max_seconds=max_seconds,
        draws=draws,
        measurements=measurements,
        device=device,
        seed=seed,
        verify=verify,
        store=store,
    )
    if as_json:
        click.echo(json.dumps(sug.to_dict(), indent=1, default=str))
        return
    how = "=" if sug.method == "branched" else "~"
    table = Table(title=f"suggest: {model} on {dataset} (B_crit {how} {sug.b_crit:.3g})")
    for col in ("batch size", "samples/s", "steps x S_min", "samples x E_min", "time", "lr range"):
        table.add_column(col, justify="right")
    for c in sug.candidates:
        table.add_row(
            str(c.batch_size) + (" (suggested)" if c.batch_size == sug.batch_size else ""),
            f"{c.samples_per_s:,.0f}",
            f"{c.steps_factor:.3g}",
            f"{c.samples_factor:.3g}",
            f"{c.relative_time:.2f}x",
            f"{c.lr_lo:.3g} .. {c.lr_hi:.3g}",
        )
    console = _out()
    console.print(table)
    for line in sug.lines():
        console.print(line, markup=False, highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: BatchlabError becomes one line on stderr and exit 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="batchlab", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except BatchlabError as err:
        click.echo(f"batchlab: error: {err}", err=True)
        sys.exit(2)
    except sqlite3.DatabaseError as err:  # the store's own errors name it; this is a backstop
        click.echo(f"batchlab: error: the results store failed ({err}); check --store", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
