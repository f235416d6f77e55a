"""mkdocs hook: the changelog page, and a nav that tolerates pages not written yet.

- `changelog.md` is generated from the repository's CHANGELOG.md, so there is one changelog.
- Nav entries whose page does not exist (yet) are dropped with an info message instead of
  failing the strict build. The opposite mistake, a page that is in no nav entry, still fails
  it (`validation.nav.omitted_files: warn` in mkdocs.yml), so a typo in the nav cannot hide a
  page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.pages")

GENERATED = frozenset({"spec.md", "changelog.md"})


def _prune(nav: list[Any], docs_dir: Path) -> list[Any]:
    out: list[Any] = []
    for entry in nav:
        if isinstance(entry, dict):
            ((title, target),) = entry.items()
            if isinstance(target, list):
                kept = _prune(target, docs_dir)
                if kept:
                    out.append({title: kept})
                continue
        else:
            title, target = None, entry
        missing = (
            isinstance(target, str)
            and target.endswith(".md")
            and "://" not in target
            and target not in GENERATED
            and not (docs_dir / target).is_file()
        )
        if missing:
            log.info("nav: leaving out %r (%s): the page does not exist yet", title, target)
            continue
        out.append(entry)
    return out


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    if config.nav is not None:
        config.nav = _prune(config.nav, Path(config.docs_dir))
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    changelog = Path(config.config_file_path).parent / "CHANGELOG.md"
    files.append(
        File.generated(config, "changelog.md", content=changelog.read_text(encoding="utf-8"))
    )
    return files
