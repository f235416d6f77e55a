"""Text as language-model data, offline: `dataset = "text:PATH"` (a UTF-8 file, or a folder of
`.txt` files), tokenized to bytes (vocabulary 256) or with a Hugging Face `tokenizer.json` the
user has (`dataset_args.tokenizer`, needs the `tokenizers` package: `batchlab[hf]`).

How the text becomes examples (fixed by `dataset_args.seed`, not by the trial's seed):

1. The token stream is cut into windows of `context + 1` tokens with a stride of `context`
   (neighbouring windows share their boundary token), starting at a seeded offset in
   `[0, context)`. A window gives inputs `w[:-1]` and next-token targets `w[1:]`, both
   `context` tokens, so every token after the offset is a target exactly once: an epoch is
   `N x context` target tokens for N training windows.
2. The windows are grouped, in stream order, into at most 100 contiguous blocks; a seeded
   `test_fraction` of the blocks (at least one) is the test set. The rest is the training set,
   from which the validation split holds out whole blocks (`val_fraction` of them, chosen with
   `data_seed`), so validation and test text is never inside a training passage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batchlab.data.raw import RawData
from batchlab.errors import DataError

DEFAULT_CONTEXT = 128
MAX_BLOCKS = 100
BYTE_VOCAB = 256
OPTIONS = ("context", "tokenizer", "test_fraction", "seed")
INSTALL_HF = "pip install 'batchlab[hf]'"


@dataclass(frozen=True, kw_only=True)
class TextOptions:
    """`dataset_args` of a text dataset, checked."""

    context: int = DEFAULT_CONTEXT
    tokenizer: Path | None = None
    test_fraction: float = 0.1
    seed: int = 0

    @classmethod
    def parse(cls, args: Mapping[str, Any], *, where: str) -> TextOptions:
        unknown = sorted(set(args) - set(OPTIONS))
        if unknown:
            raise DataError(
                f"dataset_args: {where} takes {', '.join(OPTIONS)}, not {', '.join(unknown)}"
            )
        context = args.get("context", DEFAULT_CONTEXT)
        if not isinstance(context, int) or isinstance(context, bool) or context < 1:
            raise DataError(f"dataset_args.context: need a positive integer, got {context!r}")
        frac = args.get("test_fraction", 0.1)
        if not isinstance(frac, int | float) or isinstance(frac, bool) or not 0 < frac < 1:
            raise DataError(f"dataset_args.test_fraction: need a number in (0, 1), got {frac!r}")
        seed = args.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise DataError(f"dataset_args.seed: need an integer, got {seed!r}")
        tok = args.get("tokenizer")
        if tok is not None and not isinstance(tok, str):
            raise DataError(f"dataset_args.tokenizer: need a path to tokenizer.json, got {tok!r}")
        return cls(
            context=context,
            tokenizer=None if tok is None else Path(tok).expanduser(),
            test_fraction=float(frac),
            seed=seed,
        )


def decode(data: bytes, *, where: str) -> str:
    """UTF-8 text, or a one-line error naming the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{where}: not UTF-8 text (byte {err.start}: {data[err.start : err.start + 1]!r});"
            " convert it, e.g. `iconv -f latin1 -t utf-8 FILE`"
        ) from None


def read_text(path: Path) -> str:
    """A UTF-8 file, or every `.txt` file under a folder (sorted by path) joined by newlines."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"text:{path}: the folder holds no .txt file; give a file or a folder")
        return "\n".join(decode(p.read_bytes(), where=f"text:{p}") for p in files)
    if not path.is_file():
        raise DataError(f"dataset: text:{path}: no such file or folder; fix the path")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"dataset: text:{path}: cannot read it ({err.strerror})") from None
    return decode(data, where=f"text:{path}")


def tokenize(text: str, tokenizer: Path | None) -> tuple[np.ndarray[Any, Any], int]:
    """(token ids, vocabulary size): UTF-8 bytes, or the tokenizer.json's ids."""
    if tokenizer is None:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8), BYTE_VOCAB
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError(
            f"dataset_args.tokenizer: needs the tokenizers package; install it with {INSTALL_HF}"
        ) from None
    if not tokenizer.is_file():
        raise DataError(f"dataset_args.tokenizer: {tokenizer}: no such file; fix the path")
    try:
        tok = Tokenizer.from_file(str(tokenizer))
    except Exception as err:  # the Rust library raises plain Exceptions
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"dataset_args.tokenizer: cannot read {tokenizer} ({first})") from None
    ids = np.asarray(tok.encode(text).ids, dtype=np.int64)
    return ids, int(tok.get_vocab_size())


def text_dataset(text: str, options: TextOptions, *, where: str) -> RawData:
    """Windows of `options.context` tokens, split into train and test by contiguous blocks."""
    if not text.strip():
        raise DataError(f"{where}: there is no text (the file is empty); give some UTF-8 text")
    ids, vocab = tokenize(text, options.tokenizer)
    t = options.context
    g = torch.Generator().manual_seed(options.seed)
    offset = int(torch.randint(0, t, (1,), generator=g)) if len(ids) > 2 * t + 1 else 0
    n = (len(ids) - offset - 1) // t
    if n < 2:
        raise DataError(
            f"dataset_args.context: {t} tokens is too long for {where}'s {len(ids)} tokens "
            f"(the training and test sets need a window of {t + 1} each); lower it or give "
            "more text"
        )
    # window i: tokens [offset + i t, offset + (i + 1) t], one more than the context
    stream = torch.from_numpy(ids[offset : offset + n * t + 1].astype(np.int64))
    windows = stream.unfold(0, t + 1, t)
    blocks = min(MAX_BLOCKS, n)
    block = torch.arange(n) * blocks // n  # contiguous runs of windows
    n_test = min(blocks - 1, max(1, round(options.test_fraction * blocks)))
    test_blocks = torch.randperm(blocks, generator=g)[:n_test]
    is_test = torch.isin(block, test_blocks)
    train, test = windows[~is_test], windows[is_test]
    return RawData(
        x_train=train[:, :-1].contiguous(),
        y_train=train[:, 1:].contiguous(),
        x_test=test[:, :-1].contiguous(),
        y_test=test[:, 1:].contiguous(),
        groups=block[~is_test],
        num_classes=vocab,
    )


def load_text(path: Path, args: Mapping[str, Any]) -> RawData:
    """`text:PATH` with its `dataset_args`."""
    where = f"text:{path}"
    options = TextOptions.parse(args, where=where)
    return text_dataset(read_text(path), options, where=where)
