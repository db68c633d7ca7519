"""Errors that name the file or setting at fault and what to do about it."""

from __future__ import annotations

from pathlib import Path


class MedcadError(Exception):
    """Base class: a problem the user can fix; the CLI prints it without a traceback."""


class DataError(MedcadError):
    """A data file that cannot be used.

    Args:
        path: the file at fault.
        problem: what is wrong with it, and what to do where that is not obvious.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class UnreadableSamples(DataError):
    """The images (or masks) of a dataset that cannot be decoded, all of them (`errors`: each one's DataError), said
    as the first and how many more."""

    def __init__(self, errors: list[DataError], problem: str) -> None:
        self.errors = errors
        super().__init__(errors[0].path, problem)


class NoSuchFrame(DataError):
    """A frame (DICOM) or page (TIFF, GIF, WebP, APNG) asked for beyond the file's own."""


class ConfigError(MedcadError):
    """A setting, option or study-file key that cannot be used."""
