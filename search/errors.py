"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (unknown name, unreachable storage, mismatched configuration, ...).

    The message is one line that says what is wrong and, where it can, how to fix it.
    """


class ConfigMismatch(UserError):
    """A rerun's configuration differs from the one stored with the study."""
