"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class BatchlabError(Exception):
    """Bad input: the message names the field (or file) and says how to fix it, in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class SpecError(BatchlabError):
    """The study specification is invalid."""


class DataError(BatchlabError):
    """A dataset could not be found, read or used."""


class StoreError(BatchlabError):
    """The results store does not hold what was asked for."""
