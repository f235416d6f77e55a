"""Execution settings of the forward pass: fp16 autocast with its gradient scaler (skipped steps,
unscaled clipping, a bit-exact resume), `compile` (not in the trial id, eager where it cannot
run), and the one-line fallbacks, with what the store records."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from batchlab.cli import main
from batchlab.fused import can_fuse
from batchlab.spec import spec_changes, spec_from_dict
from batchlab.step import AutogradStep, compile_unsupported
from batchlab.study import run_study
from batchlab.tasks.classification import Classification
from tests.conftest import SpecFactory
from tests.test_engine import metrics, run, same


@pytest.fixture
def fp16_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16 autocast as on a device with fp16 instructions (torch runs it on this CPU too,
    slower, which is why a study falls back to fp32 here)."""
    monkeypatch.setattr("batchlab.step.fp16_unsupported", lambda _device_type: None)


def fp16_spec(make_spec: SpecFactory, **overrides: Any) -> dict[str, Any]:
    base = {"batch_sizes": [16], "budget": {"epochs": 4}, "momentum": 0.9, "precision": "fp16"}
    return make_spec(**{**base, **overrides})


# ---- fp16 and its gradient scaler ---------------------------------------------------------------


@pytest.mark.usefixtures("fp16_runs")
def test_fp16_resumes_bit_for_bit_with_the_scaler_state(
    make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scale that overflows at first: the scaler skips steps and halves it, so its state at a
    # checkpoint differs from a fresh scaler's and a resume must restore it.
    monkeypatch.setattr("batchlab.step.FP16_INIT_SCALE", 2.0**24)
    spec = spec_from_dict(fp16_spec(make_spec, budget={"epochs": 3}))
    full, ckpts, out = run(spec)
    assert out.state.value == "COMPLETE"
    mid = ckpts[1]
    assert mid is not None and mid.scaler_state is not None
    assert mid.scaler_state["scale"] < 2.0**24  # it backed off
    again = type(mid).from_bytes(mid.to_bytes())  # as stored: weights_only=True
    assert again.scaler_state == mid.scaler_state
    rest, _, _ = run(spec, resume=again)
    assert same(metrics(full[2:]), metrics(rest))
    # Without the scaler's state the resumed trial skips steps again: not the same trial.
    fresh_scale, _, _ = run(spec, resume=dataclasses.replace(mid, scaler_state=None))
    assert not same(metrics(full[2:]), metrics(fresh_scale))


def test_a_checkpoint_stored_before_fp16_loads_without_scaler_state(
    make_spec: SpecFactory,
) -> None:
    spec = spec_from_dict(make_spec(batch_sizes=[16]))
    full, ckpts, _ = run(spec)
    assert ckpts[1] is not None
    old = dict(ckpts[1].__dict__)
    del old["scaler_state"]  # what a checkpoint stored by an older batchlab holds
    buf = io.BytesIO()
    torch.save(old, buf)
    restored = type(ckpts[1]).from_bytes(buf.getvalue())
    assert restored.scaler_state is None
    rest, _, _ = run(spec, resume=restored)
    assert same(metrics(full[2:]), metrics(rest))


@pytest.mark.usefixtures("fp16_runs")
def test_skipped_fp16_steps_are_the_scalers_job_not_divergence(
    make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2^40 overflows fp16 on every step of the first epoch (12 updates): each is skipped and
    # the scale halved; the weights do not move, and the trial goes on to learn.
    monkeypatch.setattr("batchlab.step.FP16_INIT_SCALE", 2.0**40)
    records, ckpts, out = run(spec_from_dict(fp16_spec(make_spec)))
    assert out.state.value == "COMPLETE" and out.diverged_step is None
    assert records[1].step == 12
    assert records[1].val_loss == records[0].val_loss  # every update skipped
    assert ckpts[1] is not None and ckpts[1].scaler_state is not None
    assert ckpts[1].scaler_state["scale"] == 2.0**40 / 2**12
    assert records[-1].val_loss < 0.5 * records[0].val_loss


def one_step(dtype: torch.dtype | None, clip: float) -> tuple[AutogradStep, list[torch.Tensor]]:
    """One clipped autograd step of a small MLP on a fixed batch; the step and p.grad as the
    update saw them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = AutogradStep(model, opt, Classification(), accumulate=1, clip=clip, dtype=dtype)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    step.set_batch_size(64)
    step.backward(x, y, torch.zeros(()))
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    step.update()
    return step, grads


@pytest.mark.parametrize("clip", [1e-3, 1e3])
def test_fp16_unscales_before_clipping_so_the_probe_sees_true_norms(clip: float) -> None:
    ref, ref_grads = one_step(None, clip)
    fp16, grads = one_step(torch.float16, clip)
    assert fp16.scaler is not None and fp16.scaler.get_scale() == 2.0**16
    for g, r in zip(grads, ref_grads, strict=True):  # p.grad is the true gradient, as probes see
        torch.testing.assert_close(g, r, rtol=2e-2, atol=1e-3)
    (frac, norm), (ref_frac, ref_norm) = fp16.clip_records(1), ref.clip_records(1)
    assert frac.value == ref_frac.value == (1.0 if clip < 1 else 0.0)
    assert norm.value == pytest.approx(ref_norm.value, rel=1e-2)  # not 65536 x the norm
    assert 0.05 < ref_norm.value < 100


def test_fp16_where_the_device_has_none_runs_fp32_and_says_so(
    make_spec: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batchlab.step.fp16_unsupported", lambda _t: "this CPU has no fp16")
    said: list[str] = []
    spec = make_spec(batch_sizes=[16], precision="fp16")
    study = run_study(spec, store=tmp_path / "s.db", notify=said.append)
    assert [s for s in said if "precision" in s] == [
        "batchlab: precision: fp16 asked, but this CPU has no fp16; running fp32 (stored per trial)"
    ]
    (trial,) = study.trials
    assert trial.provenance["precision"] == "fp32"
    fp32, _, _ = run(spec_from_dict(make_spec(batch_sizes=[16])))
    assert trial.last is not None and trial.last.val_loss == fp32[-1].val_loss


def test_this_cpu_says_why_it_runs_fp16_as_fp32() -> None:
    from batchlab.step import fp16_unsupported

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = "avx512_fp16" in flags or "amx_fp16" in flags
    why = fp16_unsupported("cpu")
    assert (why is None) == native
    assert why is None or why.startswith("this CPU has no fp16 instructions")


@pytest.mark.usefixtures("fp16_runs")
def test_fp16_that_runs_is_stored_as_fp16_and_enters_the_trial_id(
    make_spec: SpecFactory, tmp_path: Path
) -> None:
    said: list[str] = []
    study = run_study(fp16_spec(make_spec), store=tmp_path / "s.db", notify=said.append)
    assert not [s for s in said if "precision" in s]
    (trial,) = study.trials
    assert trial.provenance["precision"] == "fp16" and trial.provenance["compile"] is False
    fp16 = spec_from_dict(fp16_spec(make_spec)).trials()[0].trial_id
    fp32 = spec_from_dict(fp16_spec(make_spec, precision="fp32")).trials()[0].trial_id
    assert fp16 != fp32  # other numbers: another trial


def test_an_unknown_precision_is_a_one_line_error_naming_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text('name = "t"\ndataset = "synthetic"\nprecision = "fp8"\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path), "--store", str(tmp_path / "r.db")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "precision" in line and all(c in line for c in ("fp32", "bf16", "fp16"))
    assert not (tmp_path / "r.db").exists()


# ---- compile ------------------------------------------------------------------------------------


def test_compile_is_an_execution_setting_not_in_the_trial_id(make_spec: SpecFactory) -> None:
    eager = spec_from_dict(make_spec())
    compiled = spec_from_dict(make_spec(compile=True))
    assert [t.trial_id for t in compiled.trials()] == [t.trial_id for t in eager.trials()]
    assert "compile" not in compiled.trials()[0].params()
    assert spec_changes(eager.to_toml_dict(), compiled, source="stored") == []


def test_compile_does_not_fuse_and_refuses_fuse_true(
    make_spec: SpecFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not can_fuse(spec_from_dict(make_spec(compile=True, lrs=[0.1, 0.2])).trials()[:2])
    path = tmp_path / "s.toml"
    path.write_text('name = "t"\ndataset = "synthetic"\ncompile = true\nfuse = true\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path), "--store", str(tmp_path / "r.db")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "field 'compile'" in line and "fuse" in line


def eager_autograd(make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The tiny trial with `compile` where it cannot run: eager autograd (not the MLP step)."""
    with monkeypatch.context() as m:
        m.setattr("batchlab.engine.compile_unsupported", lambda _t: "no compiler")
        records, _, out = run(spec_from_dict(make_spec(batch_sizes=[16], compile=True)))
    assert out.compiled is False
    return metrics(records)


def test_torch_compile_raising_runs_eager_and_says_so_in_one_line(
    make_spec: SpecFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = eager_autograd(make_spec, monkeypatch)

    def broken(*_a: object, **_k: object) -> object:
        raise RuntimeError("Compiler: cc not found\nsecond line")

    monkeypatch.setattr("batchlab.study.compile_unsupported", lambda _t: None)
    monkeypatch.setattr("batchlab.engine.compile_unsupported", lambda _t: None)
    monkeypatch.setattr(torch, "compile", broken)
    capsys.readouterr()
    study = run_study(make_spec(batch_sizes=[16], compile=True), store=tmp_path / "s.db")
    err = [line for line in capsys.readouterr().err.splitlines() if "compile" in line]
    assert err == [
        "batchlab: compile: torch.compile failed (RuntimeError: Compiler: cc not found);"
        " running eager (stored per trial)"
    ]
    (trial,) = study.trials
    assert trial.state.value == "COMPLETE"
    assert trial.provenance["compile"] is False  # asked, and the store says what ran
    records, _, out = run(spec_from_dict(make_spec(batch_sizes=[16], compile=True)))
    assert out.compiled is False and same(metrics(records), expected)


class _FailsAtFirstCall(nn.Module):
    """What `torch.compile` hands back when its toolchain breaks: it raises when first called."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("InductorError: C++ compile error")


def test_a_compiled_step_that_raises_at_the_first_call_runs_eager_bit_for_bit(
    make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = eager_autograd(make_spec, monkeypatch)
    monkeypatch.setattr("batchlab.engine.compile_unsupported", lambda _t: None)
    monkeypatch.setattr(torch, "compile", lambda model, **_k: _FailsAtFirstCall(model))
    capsys.readouterr()
    records, _, out = run(spec_from_dict(make_spec(batch_sizes=[16], compile=True)))
    assert out.compiled is False
    assert same(metrics(records), expected)  # the failed attempt left no trace in the trial
    (line,) = [s for s in capsys.readouterr().err.splitlines() if "compile" in s]
    assert "RuntimeError: InductorError: C++ compile error" in line


def test_compile_where_it_cannot_run_says_so_and_stores_false(
    make_spec: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for where in ("batchlab.study", "batchlab.engine"):
        monkeypatch.setattr(f"{where}.compile_unsupported", lambda _t: "no C++ compiler")
    said: list[str] = []
    spec = make_spec(batch_sizes=[16], compile=True)
    study = run_study(spec, store=tmp_path / "s.db", notify=said.append)
    assert [s for s in said if "compile" in s] == [
        "batchlab: compile: asked, but no C++ compiler; running eager (stored per trial)"
    ]
    (trial,) = study.trials
    assert trial.provenance["compile"] is False


@pytest.mark.slow
@pytest.mark.skipif(
    compile_unsupported("cpu") is not None,
    reason=f"torch.compile cannot run here: {compile_unsupported('cpu')}",
)
def test_compiled_training_gives_the_eager_numbers(
    make_spec: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One shape (192 training rows in batches of 16) keeps it to one compile of a tiny MLP.
    expected = eager_autograd(make_spec, monkeypatch)
    study = run_study(make_spec(batch_sizes=[16], compile=True), store=tmp_path / "s.db")
    (trial,) = study.trials
    assert trial.state.value == "COMPLETE" and trial.provenance["compile"] is True
    got = metrics(list(trial.evals))
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):  # inductor may reorder float sums
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, nan_ok=True)


def test_a_worker_reports_the_compile_it_ran_with_for_the_store(
    make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchlab.executors.base import Finished, Job, run_job
    from tests.test_engine import data_for

    def broken(*_a: object, **_k: object) -> object:
        raise RuntimeError("no cc")

    monkeypatch.setattr("batchlab.engine.compile_unsupported", lambda _t: None)
    monkeypatch.setattr(torch, "compile", broken)
    spec = spec_from_dict(make_spec(batch_sizes=[16], compile=True))
    events: list[object] = []
    job = Job(trial=spec.trials()[0], threads=None, resume=None, save_weights=False, executor="x")
    run_job(job, data_for(spec), torch.device("cpu"), events.append)
    (done,) = [e for e in events if isinstance(e, Finished)]
    assert done.state.value == "COMPLETE" and done.provenance == {"compile": False}
