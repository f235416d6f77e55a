"""mkdocs hook: serve the study spec reference, generated from the spec's pydantic models.

The page `spec.md` has no source file: `batchlab.docs.spec_reference()` writes it at every build
from `StudySpec` and the models nested in it, so a field's type, default or description in the
docs is always the one in the code.
"""

from __future__ import annotations

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from batchlab.docs import spec_reference

PAGE = "spec.md"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, PAGE, content=spec_reference()))
    return files
