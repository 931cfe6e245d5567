"""The store's one error type, so callers (the CLI) can catch store problems and print them."""

from __future__ import annotations


class StoreError(Exception):
    """A store problem a user can act on: unknown run, corrupt checkpoint, too-new schema."""
