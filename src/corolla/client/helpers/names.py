"""Names that node helpers and server strategies agree on (array prefixes, metric keys).

They live on the node side of the layers so both `corolla.client.helpers` and
`corolla.strategies` can use them.
"""

from __future__ import annotations

import numpy as np

from ...records import Arrays

SCAFFOLD_PREFIX = "scaffold/"
#: the train-reply metric in which a FedNova node reports tau_k (its normalizing step count)
LOCAL_STEPS = "local-steps"


def _floating(a: np.ndarray) -> bool:
    return a.dtype.kind in "fc"


def scaffold_arrays(model: Arrays, names: list[str] | None = None) -> Arrays:
    """The model arrays followed by a zero control variate ``scaffold/<name>`` for each array
    in `names` (default: every floating-point array). SCAFFOLD's initial arrays are these."""
    out = Arrays(model)
    for k in names if names is not None else [k for k, v in model.items() if _floating(v)]:
        if k.startswith(SCAFFOLD_PREFIX):
            raise ValueError(f"model array {k!r} already starts with {SCAFFOLD_PREFIX!r}; rename it")
        out[SCAFFOLD_PREFIX + k] = np.zeros_like(model[k])
    return out


def model_arrays(arrays: Arrays) -> Arrays:
    """`arrays` without SCAFFOLD's control variates, e.g. for a server-side `evaluate_fn`."""
    return Arrays((k, v) for k, v in arrays.items() if not k.startswith(SCAFFOLD_PREFIX))
