"""`batchlab report` and `batchlab compare` on bad input: one line on stderr or a plain page.

Never a traceback: an unknown study or store is a one-line error (exit 2); an empty study and a
study where every trial diverged get a page that says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import batchlab
from batchlab.cli import main
from batchlab.spec import load_spec
from batchlab.store import Store
from batchlab.trial import TrialState

pytestmark = pytest.mark.slow  # runs one tiny real study (a few seconds)

TINY = {
    "dataset": "synthetic",
    "dataset_args": {"n_train": 128, "n_test": 64, "dim": 8, "classes": 3},
    "model": "mlp",
    "model_args": {"widths": [8]},
    "batch_sizes": [8],
    "seeds": [0, 1],
    "budget": {"epochs": 1},
    "device": "cpu",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with a study where every trial diverged (lr 1e6) and one with no trials."""
    path = tmp_path_factory.mktemp("store") / "r.db"
    diverged = batchlab.run_study({**TINY, "name": "boom", "lrs": [1e6]}, store=path)
    assert {t.state for t in diverged.trials} == {TrialState.DIVERGED}
    with Store(path) as s:
        s.put_study("empty", load_spec(base={**TINY, "name": "empty"}).to_toml_dict())
    return path


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--no-png"])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return int(code) if isinstance(code, int) else 1, out, err


def test_unknown_study_or_store_is_one_line(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["report", "nope", "--store", str(store)], capsys)
    assert code == 2 and out == ""
    assert err == f"batchlab: error: no study named 'nope' in {store} (studies: boom, empty)\n"
    code, _, err = cli(["compare", "boom", "nope", "--store", str(store)], capsys)
    assert code == 2 and err.count("\n") == 1 and "no study named 'nope'" in err
    missing = tmp_path / "missing.db"
    code, _, err = cli(["report", "boom", "--store", str(missing)], capsys)
    assert code == 2 and err == (
        f"batchlab: error: store {missing} does not exist; run a study first or pass --store PATH\n"
    )
    assert not missing.exists()  # reading never creates a store
    code, _, err = cli(["compare", "boom", "boom", "--store", str(store)], capsys)
    assert code == 2
    assert err == "batchlab: error: study 'boom' given twice: compare distinct studies\n"


def test_report_into_a_file_is_a_usage_error(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    code, _, err = cli(["report", "boom", "--store", str(store), "--out", str(a_file)], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last == f"Error: Invalid value for '--out': Directory '{a_file}' is a file."
    assert a_file.read_text() == "x"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("empty", "This study has no trials yet, so there is nothing to plot."),
        ("boom", "No trial completed, so there is nothing to plot; see the findings above."),
    ],
)
def test_empty_and_all_diverged_studies_get_a_plain_page(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, says: str
) -> None:
    out_dir = tmp_path / name
    code, out, err = cli(["report", name, "--store", str(store), "--out", str(out_dir)], capsys)
    assert code == 0 and err == ""
    assert out == f"report: {(out_dir / 'index.html').resolve()}\n"
    html = (out_dir / "index.html").read_text(encoding="utf-8")
    assert says in html and "Plotly.newPlot" not in html
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    (study,) = summary["studies"]
    assert not any(f["shown"] for f in summary["figures"])
    if name == "boom":
        assert study["states"]["DIVERGED"] == 2
        assert "2 trials diverged: b=8 lr_base=1e+06 (2 of 2 seeds" in html
        assert study["findings"][0]["kind"] == "no_complete"
    else:
        assert study["trials"] == 0 and study["findings"][0]["kind"] == "empty"
