"""A batch-size study of a next-token language model, in a few lines of Python.

Run it: `python examples/language_model_example.py` (byte-level GRU on the README, ~30 s on CPU).
The loss is cross-entropy per token, the score token accuracy; a batch counts sequences
(`batch_size`) and tokens (`batch_tokens`).
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import pandas as pd

import batchlab

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so the spec can name lm_workload


def main(epochs: int = 3, store: str | None = None) -> pd.DataFrame:
    """Run the study; print the final test loss and perplexity per batch size; return them."""
    store = store or str(Path(tempfile.mkdtemp()) / "lm.db")
    study = batchlab.run_study(
        {
            "name": "tiny-lm",
            "dataset": "lm_workload:text_windows",
            "dataset_args": {"context": 32},
            "task": "language-model",
            "model": "lm_workload:tiny_lm",
            "model_args": {"width": 64},
            "optimizer": "adamw",
            "lrs": [3e-3],
            "batch_sizes": [8, 32, 128],
            "budget": {"epochs": epochs},
            "device": "cpu",
        },
        store=store,
    )
    df = study.to_dataframe()
    last = df.groupby("trial_id").tail(1)[["batch_size", "batch_tokens", "step", "test_loss"]]
    last = last.assign(test_perplexity=[math.exp(v) for v in last["test_loss"]])
    print(last.to_string(index=False, float_format="{:.3f}".format))
    return last


if __name__ == "__main__":
    main()
