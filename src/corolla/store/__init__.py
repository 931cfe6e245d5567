"""Persistence: runs, rounds, metrics, events and checkpoints under one directory.

Sits below workflows: it stores round records as plain dicts and state as nested dicts
of arrays and scalars, and imports nothing from corolla but `records`.
"""

from .errors import StoreError
from .sqlite import RunInfo, Store
from .state_io import flatten_state, unflatten_state

__all__ = ["RunInfo", "Store", "StoreError", "flatten_state", "unflatten_state"]
