"""Node side: the ClientApp, its Context and middleware."""

from .app import Client, ClientApp, Handler, Mod
from .context import Context

__all__ = ["Client", "ClientApp", "Context", "Handler", "Mod"]
