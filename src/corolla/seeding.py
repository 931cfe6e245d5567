"""Every random draw derives from the run seed, keyed by (purpose, round, node).

No code in corolla touches the global numpy or `random` state: resuming a run needs only the
round number, and the same seed gives the same sampled nodes, noise and data splits.
"""

from __future__ import annotations

import zlib

import numpy as np


def _key(purpose: str) -> int:
    return zlib.crc32(purpose.encode())


def seed_sequence(seed: int, purpose: str, *keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, _key(purpose), *(int(k) for k in keys)])


def rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A generator for one purpose, e.g. ``rng(seed, "sample", round)``."""
    return np.random.default_rng(seed_sequence(seed, purpose, *keys))


def derive_int(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit integer seed for libraries that want one (torch.manual_seed, sklearn)."""
    return int(seed_sequence(seed, purpose, *keys).generate_state(1, np.uint64)[0] >> np.uint64(1))
