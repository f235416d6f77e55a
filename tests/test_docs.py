"""The docs: the spec reference generator (`batchlab.docs`), its hooks, and a strict site build."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from batchlab import presets
from batchlab.docs import (
    constraints,
    default_text,
    model_table,
    nested_models,
    spec_reference,
    toml_text,
    type_text,
)
from batchlab.spec import EXECUTION_FIELDS, Budget, Schedule, StudySpec

ROOT = Path(__file__).resolve().parents[1]


def _rows(table: str) -> dict[str, list[str]]:
    """Field name -> the other cells of each row of a generated table."""
    out = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        out[cells[0].strip("`")] = cells[1:]
    return out


def test_every_spec_field_is_documented_in_order_with_a_description() -> None:
    rows = _rows(model_table(StudySpec))
    assert list(rows) == list(StudySpec.model_fields)
    models: list[type[BaseModel]] = [StudySpec, *nested_models(StudySpec)]
    for model in models:
        undocumented = [n for n, f in model.model_fields.items() if not f.description]
        assert not undocumented, f"{model.__name__}: add a docstring under {undocumented}"


def test_documented_defaults_read_back_as_toml_give_the_real_defaults() -> None:
    # the independent reference: what a spec with only a name holds, dumped as plain data
    actual = StudySpec(name="x").to_toml_dict()
    rows = _rows(model_table(StudySpec))
    for name, (_, default, _) in rows.items():
        if default == "required":
            assert StudySpec.model_fields[name].is_required()
        elif default == "unset":
            assert name not in actual  # to_toml_dict drops None
        else:
            value = tomllib.loads(f"v = {default.strip('`')}")["v"]
            expected = actual[name]
            if isinstance(expected, float):
                assert value == pytest.approx(expected, rel=1e-6), name
            else:
                assert value == expected, name


def test_execution_fields_are_marked_and_no_others() -> None:
    rows = _rows(model_table(StudySpec, execution=EXECUTION_FIELDS))
    marked = {n for n, (_, _, desc) in rows.items() if desc.startswith("*Execution.*")}
    assert marked == EXECUTION_FIELDS & set(StudySpec.model_fields)


def test_type_text_in_toml_terms() -> None:
    assert type_text(int | None) == "integer or none"
    assert type_text(tuple[float, ...]) == "list of float"
    assert type_text(tuple[float, float]) == "[float, float]"
    assert type_text(Literal["sgd", "adam"]) == '"sgd" or "adam"'
    assert type_text(dict[str, Any]) == "table"
    assert type_text(dict[str, dict[str, Any]]) == "table of table"
    assert type_text(Annotated[int, Field(gt=0)] | Literal["auto"]) == 'integer (> 0) or "auto"'
    assert type_text(Budget) == "[Budget](#budget)"
    assert constraints(list(StudySpec.model_fields["val_fraction"].metadata)) == ">= 0.0, < 1.0"


def test_toml_text_and_defaults() -> None:
    assert toml_text(Budget(epochs=25)) == "{ epochs = 25 }"
    assert toml_text({"a": [1, 2], "b": "x", "c": True}) == '{ a = [1, 2], b = "x", c = true }'
    assert default_text(StudySpec.model_fields["name"]) == "required"
    assert default_text(StudySpec.model_fields["train_subset"]) == "unset"
    assert default_text(StudySpec.model_fields["budget"]) == "`{ epochs = 25 }`"


def test_nested_models_and_the_page() -> None:
    nested = nested_models(StudySpec)
    assert nested[:2] == [Budget, Schedule]
    page = spec_reference()
    models: list[type[BaseModel]] = [StudySpec, *nested]
    for model in models:
        assert f"\n## {model.__name__}\n" in page
        for name in model.model_fields:
            assert f"| `{name}` |" in page


def _make_figures() -> ModuleType:
    """docs/make_figures.py, which is a script, not a module of the package."""
    path = ROOT / "docs" / "make_figures.py"
    spec = importlib.util.spec_from_file_location("make_figures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_study_design_has_its_figure_on_a_page() -> None:
    figures: dict[str, Any] = _make_figures().FIGURES
    # seed-sweep is the full-size quick preset: the quick figure (on the home page) shows it
    assert set(figures) == set(presets.names()) - {"seed-sweep"}
    pages = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")}
    for preset in figures:
        png = f"figures/{preset}.png"
        assert (ROOT / "docs" / png).is_file(), f"run: python docs/make_figures.py {preset}"
        page = "index.md" if preset == "quick" else "designs.md"
        assert f"]({png})" in pages[page], f"{png} is not shown in docs/{page}"
        if preset != "quick":
            assert f"(`{preset}`)" in pages["designs.md"]  # the design's section heading


@pytest.mark.slow
def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")]
    proc = subprocess.run(
        [*cmd, "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    spec_page = (site / "spec" / "index.html").read_text(encoding="utf-8")
    for name in StudySpec.model_fields:
        assert f"<code>{name}</code>" in spec_page
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Keep a Changelog" in changelog
    designs = (site / "designs" / "index.html").read_text(encoding="utf-8")
    for png in re.findall(r'src="\.\./(figures/[\w-]+\.png)"', designs):
        assert (site / png).is_file()
    assert "figures/budget-controls.png" in designs
    # every nav entry is a built page (mkdocs.yml: a nav entry without its page fails --strict)
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = re.findall(r"^  - [^:\n]+: (\S+\.md)$", config.split("\nnav:\n", 1)[1], flags=re.M)
    assert len(nav) >= 12 and {"spec.md", "probes.md", "ray.md"} <= set(nav)
    for page in nav:
        built = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert built.is_file(), page
    # the probes with their formulas, performance with its measurements, Ray
    probes = (site / "probes" / "index.html").read_text(encoding="utf-8")
    assert "B_simple = tr(Sigma) / |G|^2" in probes
    assert "|G|^2     ≈ (B |G_B|^2 - b |G_b|^2) / (B - b)" in probes
    performance = (site / "performance" / "index.html").read_text(encoding="utf-8")
    assert performance.count("<table>") >= 4 and "samples/s" in performance
    ray = (site / "ray" / "index.html").read_text(encoding="utf-8")
    assert "--executor ray" in ray and "num_cpus=1" in ray
    # sources that are not pages stay out of the site
    assert not (site / "hooks").exists() and not (site / "make_figures.py").exists()
