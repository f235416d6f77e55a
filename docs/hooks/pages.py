"""mkdocs hook: the changelog page, generated from the repository's CHANGELOG.md.

`changelog.md` has no source file under docs/, so there is one changelog. A nav entry whose
page does not exist fails the strict build (`validation.nav.not_found` in mkdocs.yml), and so
does a page in no nav entry (`omitted_files`).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files


def on_files(files: Files, config: MkDocsConfig) -> Files:
    changelog = Path(config.config_file_path).parent / "CHANGELOG.md"
    files.append(
        File.generated(config, "changelog.md", content=changelog.read_text(encoding="utf-8"))
    )
    return files
