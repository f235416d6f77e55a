"""`dataset = "fortunes"`: English quotations and jokes from the Debian package `fortunes`
(installed by `make data`), as text for a language model (see `batchlab.data.text`).

Every fortune file of /usr/share/games/fortunes (or of `--data-dir`) is read in name order,
skipping the `.dat` indexes, the `.u8` links and the `ascii-art` pictures; its entries
(separated by lines holding `%`) are joined by blank lines. `fortunes` ships about 2.5 MB of
text (~2.5M byte tokens); `fortunes-off` (a separate package) is never read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchlab.data.raw import RawData
from batchlab.data.text import TextOptions, decode, text_dataset
from batchlab.errors import DataError

SYSTEM_FORTUNES = Path("/usr/share/games/fortunes")
SKIP = {"ascii-art"}  # pictures, not prose
INSTALL = "install it with `apt-get install fortunes` (or `make data`), or pass --data-dir DIR"


def fortune_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in (".dat", ".u8")
        and p.name not in SKIP
    )


def entries(text: str) -> list[str]:
    """A fortune file's entries: the text between lines holding only `%`."""
    return [e.strip("\n") for e in re.split(r"^%[ \t]*$", text, flags=re.M) if e.strip()]


def read_fortunes(folder: Path) -> str:
    files = fortune_files(folder) if folder.is_dir() else []
    if not files:
        raise DataError(f"fortunes: no fortune files in {folder}; {INSTALL}")
    found = [e for p in files for e in entries(decode(p.read_bytes(), where=f"fortunes: {p}"))]
    return "\n\n".join(found) + "\n"


def load_fortunes(args: Mapping[str, Any], data_dir: Path | None) -> RawData:
    folder = Path(data_dir) if data_dir is not None else SYSTEM_FORTUNES
    options = TextOptions.parse(args, where="fortunes")
    return text_dataset(read_fortunes(folder), options, where="fortunes")
