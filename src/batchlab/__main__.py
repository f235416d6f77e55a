"""`python -m batchlab` is the `batchlab` command."""

from batchlab.cli import main

main()
