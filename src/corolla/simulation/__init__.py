"""The simulation runtime: virtual nodes on one machine behind the Grid protocol."""

from .federation import Federation, NodeStates
from .inline import InlineGrid
from .runner import BACKENDS, make_grid, run_project, run_simulation

__all__ = ["BACKENDS", "Federation", "InlineGrid", "NodeStates", "make_grid", "run_project", "run_simulation"]
