"""corolla: federated learning from laptop simulation to production deployment."""

from .client import Client, ClientApp, Context
from .message import Message
from .records import Arrays, Config, Metrics
from .simulation import run_project, run_simulation
from .strategies import FedAvg, Strategy
from .workflows import History, Rounds, ServerApp, ServerContext

__version__ = "0.1.0"

__all__ = [
    "Arrays",
    "Client",
    "ClientApp",
    "Config",
    "Context",
    "FedAvg",
    "History",
    "Message",
    "Metrics",
    "Rounds",
    "ServerApp",
    "ServerContext",
    "Strategy",
    "__version__",
    "run_project",
    "run_simulation",
]
