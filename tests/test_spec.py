from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchlab.errors import SpecError
from batchlab.spec import apply_overrides, load_spec, parse_batch_sizes, spec_from_dict

SpecFactory = Callable[..., dict[str, Any]]


def test_range_means_powers_of_two() -> None:
    assert parse_batch_sizes("8:2048") == (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    assert parse_batch_sizes("5:40") == (8, 16, 32)
    assert parse_batch_sizes([64, 8, 8]) == (8, 64)


def test_trials_are_the_grid_with_resolved_lr(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(
        make_spec(lrs=[0.1, 0.2], seeds=[0, 1], lr_scaling="linear", reference_batch_size=32)
    )
    trials = spec.trials()
    assert len(trials) == 2 * 2 * 2
    t = next(t for t in trials if t.batch_size == 64 and t.lr_base == 0.2)
    assert t.lr == pytest.approx(0.4)


def test_trial_id_is_stable_and_depends_on_what_runs(make_spec: SpecFactory) -> None:
    a = spec_from_dict(make_spec()).trials()
    b = spec_from_dict(make_spec(device="auto", threads=1)).trials()
    c = spec_from_dict(make_spec(momentum=0.9)).trials()
    assert [t.trial_id for t in a] == [t.trial_id for t in b]  # where it runs is not what it runs
    assert {t.trial_id for t in a}.isdisjoint(t.trial_id for t in c)
    assert len({t.trial_id for t in a}) == len(a)


def test_studies_with_other_names_never_share_a_trial(make_spec: SpecFactory) -> None:
    a = spec_from_dict(make_spec(name="first")).trials()
    b = spec_from_dict(make_spec(name="second")).trials()
    assert {t.trial_id for t in a}.isdisjoint(t.trial_id for t in b)


def test_overrides_parse_toml_values_and_replace_budget(make_spec: SpecFactory) -> None:
    out = apply_overrides(
        make_spec(),
        ["budget.steps=10", "lrs=[0.5, 1.0]", "optimizer=adam", "model_args.widths=[4,4]"],
    )
    assert out["budget"] == {"steps": 10}
    assert out["lrs"] == [0.5, 1.0]
    assert out["optimizer"] == "adam"
    assert out["model_args"]["widths"] == [4, 4]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"lrss": [0.1]}, "unknown key 'lrss'; did you mean 'lrs'?"),
        ({"budget": {"epoch": 2}}, "unknown key 'budget.epoch'; did you mean 'epochs'?"),
        ({"budget": {"epochs": 2, "steps": 3}}, "give exactly one of epochs"),
        ({"budget": {}}, "give exactly one of epochs"),
        ({"batch_sizes": [0, 8]}, "batch sizes must be positive"),
        ({"batch_sizes": "8-64"}, "lo:hi"),
        ({"lrs": [0.1, -1]}, "learning rates must be finite and > 0"),
        ({"lrs": []}, "at least one learning rate"),
        ({"seeds": []}, "at least one seed"),
        ({"optimizer": "lion"}, "field 'optimizer'"),
        ({"device": "gpu"}, "use auto, cpu, cuda or cuda:N"),
        ({"val_fraction": 1.5}, "field 'val_fraction'"),
        ({"probes": "fast"}, "field 'probes': unknown probe 'fast'"),
        ({"probes": "cheap", "probe_args": {"sharpness": {}}}, "field 'probes': options for"),
        ({"accumulate": 3}, "field 'accumulate': 3 does not divide batch size 8"),
        ({"fuse": True, "workers": 2}, "field 'fuse': fused groups train in this process"),
        ({"fuse": "maybe"}, "field 'fuse': 'maybe' is not a fuse setting; use true, false or auto"),
    ],
)
def test_bad_spec_is_one_line_naming_the_field(
    overrides: dict[str, object], needle: str, make_spec: SpecFactory
) -> None:
    with pytest.raises(SpecError) as err:
        spec_from_dict(make_spec(**overrides))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nlrs = [0.1\n')
    with pytest.raises(SpecError, match="malformed TOML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read study file"):
        load_spec(tmp_path / "missing.toml")


def test_toml_file_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text(
        'name = "fmnist-sweep"\nbatch_sizes = "8:32"\nbudget = { steps = 100 }\n'
        'lr_scaling = "sqrt"\n'
    )
    spec = load_spec(f, overrides=["seeds=[1,2]"])
    assert spec.batch_sizes == (8, 16, 32)
    assert spec.budget.kind == "steps" and spec.budget.value == 100
    assert spec.seeds == (1, 2)
    assert spec_from_dict(spec.to_toml_dict()) == spec


def test_fields_at_their_default_do_not_enter_the_trial_id(make_spec: SpecFactory) -> None:
    a = spec_from_dict(make_spec()).trials()
    b = spec_from_dict(make_spec(accumulate=1, probes=None, save_weights=True)).trials()
    assert [t.trial_id for t in a] == [t.trial_id for t in b]
    c = spec_from_dict(make_spec(probes="cheap")).trials()
    assert {t.trial_id for t in a}.isdisjoint(t.trial_id for t in c)


@pytest.mark.parametrize("field", ["dataset", "train_subset", "val_fraction", "data_seed"])
def test_a_variant_cannot_change_the_data(field: str, make_spec: SpecFactory) -> None:
    value = {"dataset": "digits", "train_subset": 100, "val_fraction": 0.2, "data_seed": 3}[field]
    spec = spec_from_dict(make_spec(variants=[{"label": "other", field: value}]))
    with pytest.raises(SpecError, match=f"cannot override \\['{field}'\\].*one dataset"):
        spec.resolved_variants()
