"""Exceptions raised by gradfix_hf.

Every error names the thing that is wrong (model, file, tensor or recipe field) and why, and is raised
before long work starts. All derive from :class:`GradFixError` so callers can catch one type. A misspelt
name gets the closest valid one (:func:`did_you_mean`).
"""
from __future__ import annotations

import difflib
from typing import Iterable


class GradFixError(Exception):
    """Base class of every error gradfix_hf raises on bad input."""


class RecipeError(GradFixError, ValueError):
    """A recipe field is unknown, missing or has an invalid value."""


class ModelResolutionError(GradFixError):
    """A model reference cannot be resolved to usable files (missing folder/files, pickle not allowed...)."""


class CompatibilityError(GradFixError):
    """θ_A, θ_A^ft and θ_B (or a votes file) do not describe the same architecture."""


class DataError(GradFixError, ValueError):
    """The labelled samples are unusable: empty, too few for a class, labels outside the label set..."""


class VotesFileError(GradFixError):
    """A votes file is corrupt, truncated, or was computed for another target or parameter set."""


class OutputError(GradFixError):
    """An output cannot be written where asked: it would replace an input or something gradfix did not write,
    its path is blocked, or the disk is full."""


class NonFiniteError(GradFixError):
    """NaN or inf found in weights or gradients."""


def did_you_mean(value: object, choices: Iterable[object]) -> str:
    """`` Did you mean 'x'?`` for the closest valid choice (difflib, cutoff 0.5), or "" when none is close."""
    match = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""
