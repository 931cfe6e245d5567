"""Deployment: the coordinator (`corolla serve`), long-lived nodes (`corolla node`) and the driver
(`corolla run --server`), over gRPC streams with TLS and Ed25519 node keys."""

from .coordinator import Coordinator, serve
from .driver import DeployGrid, DriverError
from .node import Node, NodeRefused
from .run import run_deployment, run_project_deployed

__all__ = [
    "Coordinator",
    "DeployGrid",
    "DriverError",
    "Node",
    "NodeRefused",
    "run_deployment",
    "run_project_deployed",
    "serve",
]
