"""What a run does: workflows drive strategies through a Grid."""

from .context import NullObserver, RunObserver, ServerContext
from .history import Failure, History, RoundRecord
from .rounds import RoundFailed, Rounds
from .server_app import ServerApp, Workflow

__all__ = [
    "Failure",
    "History",
    "NullObserver",
    "RoundFailed",
    "RoundRecord",
    "Rounds",
    "RunObserver",
    "ServerApp",
    "ServerContext",
    "Workflow",
]
