"""Text datasets (`text:PATH`, `fortunes`): windows, contiguous splits, tokenizers, bad input."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from batchlab.cli import main
from batchlab.data import load_dataset
from batchlab.data.fortunes import SYSTEM_FORTUNES, entries, read_fortunes
from batchlab.errors import DataError

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))
HAS_TOKENIZERS = importlib.util.find_spec("tokenizers") is not None


def write(tmp_path: Path, text: str = TEXT, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def windows_of(ds_x: torch.Tensor, ds_y: torch.Tensor) -> torch.Tensor:
    return torch.cat([ds_x, ds_y[:, -1:]], dim=1)  # the context + 1 tokens of each window


def test_byte_windows_cover_the_stream_once_with_next_token_targets(tmp_path: Path) -> None:
    path = write(tmp_path)
    ds = load_dataset(f"text:{path}", args={"context": 16}, val_fraction=0.1)
    stream = torch.tensor(list(path.read_bytes()))
    assert ds.task.name == "language-model" and ds.num_classes == 256
    assert ds.input_shape == (16,)
    splits = [(ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)]
    for x, y in splits:
        assert x.shape == y.shape and x.shape[1] == 16 and len(x) > 0
        torch.testing.assert_close(x[:, 1:], y[:, :-1])  # y is x shifted by one token
    # the windows are the stream's, cut at offset + i * 16 for one offset: each used once
    got = Counter(tuple(w.tolist()) for x, y in splits for w in windows_of(x, y))
    cuts = [Counter(tuple(w.tolist()) for w in stream[o:].unfold(0, 17, 16)) for o in range(16)]
    assert got in cuts
    assert sum(got.values()) * 16 > len(stream) - 2 * 16  # no more than a window's tail is lost


def test_splits_are_contiguous_blocks_fixed_by_the_seeds(tmp_path: Path) -> None:
    path = write(tmp_path)
    a = load_dataset(f"text:{path}", args={"context": 8}, val_fraction=0.2)
    b = load_dataset(f"text:{path}", args={"context": 8}, val_fraction=0.2)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.x_val, b.x_val)
    other_test = load_dataset(f"text:{path}", args={"context": 8, "seed": 1}, val_fraction=0.2)
    assert not torch.equal(a.x_test, other_test.x_test)
    other_val = load_dataset(f"text:{path}", args={"context": 8}, val_fraction=0.2, data_seed=1)
    assert torch.equal(a.x_test, other_val.x_test) and not torch.equal(a.x_val, other_val.x_val)
    # 100 blocks: 10 for test, then 18 of the other 90 for validation
    n = len(a.train) + len(a.val) + len(a.test)
    assert len(a.test) == pytest.approx(0.1 * n, abs=n / 100 + 1)
    assert len(a.val) == pytest.approx(0.2 * 0.9 * n, abs=n / 100 + 1)
    # contiguous: consecutive validation windows continue each other (the boundary token is
    # shared) except where one held-out block ends and the next begins
    w = windows_of(a.x_val, a.y_val)
    breaks = sum(int(w[i, -1] != w[i + 1, 0]) for i in range(len(w) - 1))
    assert breaks <= 18 - 1


def test_a_folder_of_txt_files_and_train_subset(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    write(folder, TEXT[:1500], "a.txt")
    write(folder / "sub", TEXT[1500:], "b.txt")
    write(folder, "\xff not read: not a .txt", "notes.md")
    whole = load_dataset(f"text:{folder}", args={"context": 16}, val_fraction=0.0)
    n = len(whole.train) + len(whole.test)
    assert n == (len(TEXT) + 1) // 16 or n == (len(TEXT) + 1 - 1) // 16 or n > 150
    sub = load_dataset(f"text:{folder}", args={"context": 16}, val_fraction=0.0, train_subset=20)
    assert len(sub.train) == 20


@pytest.mark.skipif(not HAS_TOKENIZERS, reason="tokenizers is not installed (batchlab[hf])")
def test_a_tokenizer_json_gives_its_ids_and_vocabulary(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    path = write(tmp_path)
    args = {"context": 8, "tokenizer": str(tmp_path / "tokenizer.json")}
    ds = load_dataset(f"text:{path}", args=args, val_fraction=0.0)
    assert ds.num_classes == tok.get_vocab_size()
    ids = torch.tensor(tok.encode(TEXT).ids)
    w = windows_of(ds.x_train, ds.y_train)[0]
    assert any(torch.equal(ids[s : s + 9], w) for s in range(len(ids) - 8))


@pytest.mark.parametrize(
    ("content", "args", "needle"),
    [
        (b"", {}, "there is no text (the file is empty)"),
        ("caf\xe9".encode("latin-1") * 50, {}, "not UTF-8 text (byte 3"),
        (b"short text", {"context": 128}, "dataset_args.context: 128 tokens is too long"),
        (TEXT.encode(), {"contxt": 8}, "takes context, tokenizer, test_fraction, seed, not contxt"),
        (TEXT.encode(), {"context": 0}, "dataset_args.context: need a positive integer"),
        (TEXT.encode(), {"tokenizer": "nope.json"}, "dataset_args.tokenizer"),
    ],
)
def test_bad_text_is_a_one_line_error(
    tmp_path: Path, content: bytes, args: dict[str, object], needle: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(needle)) as err:
        load_dataset(f"text:{path}", args=args)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(f"text:{tmp_path / 'missing.txt'}")


def test_bad_text_on_the_command_line_exits_2_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "s.toml").write_text(
        'name = "t"\ndataset = "text:empty.txt"\nmodel = "gpt"\nbatch_sizes = [8]\n'
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "s.toml", "--store", "r.db"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert exit_info.value.code == 2
    assert len(errors) == 1 and "text:empty.txt: there is no text (the file is empty)" in errors[0]
    assert not (tmp_path / "r.db").exists()


def test_fortune_files_are_read_as_entries(tmp_path: Path) -> None:
    folder = tmp_path / "fortunes"
    folder.mkdir()
    (folder / "wisdom").write_text("First saying.\n%\nSecond,\non two lines.\n%\n")
    (folder / "wisdom.dat").write_bytes(b"\x00\x02binary index")
    (folder / "wisdom.u8").symlink_to(folder / "wisdom")
    (folder / "ascii-art").write_text("  /\\_/\\\n%\n")
    assert entries("a\n%\nb\n%  \n\n%\n") == ["a", "b"]
    assert read_fortunes(folder) == "First saying.\n\nSecond,\non two lines.\n"
    with pytest.raises(DataError, match="apt-get install fortunes"):
        read_fortunes(tmp_path / "nowhere")


@pytest.mark.skipif(not SYSTEM_FORTUNES.is_dir(), reason="fortunes is not installed (make data)")
def test_the_fortunes_corpus() -> None:
    ds = load_dataset("fortunes", args={"context": 64}, val_fraction=0.05)
    assert ds.num_classes == 256 and ds.input_shape == (64,)
    tokens = 64 * (len(ds.train) + len(ds.val) + len(ds.test))
    assert 2_000_000 < tokens < 3_000_000  # about 2.5 MB of English text
    assert 0.08 < len(ds.test) / (tokens / 64) < 0.12
