"""How a runbook's kernel talks to papermill: encrypted where the stack can, never plain TCP.

ipykernel warns "Kernel is running over TCP without encryption" at every start over plain TCP
(once per runbook, on the run's stderr), and it is right: code and outputs, query results
included, cross the loopback in clear. Where jupyter_client can provision CurveZMQ keys and
the kernel's spec declares it takes them, the manager does; elsewhere on POSIX the kernel
listens on Unix sockets in Jupyter's private runtime folder instead of TCP ports.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from traitlets.config import Config
# jupyter_client, zmq and traitlets load with papermill, where a notebook runs: the CLI
# imports pipeline for every verb.


def kernel_manager_config(kernel_name: str) -> Config:
    """The traitlets Config papermill hands to the kernel manager it creates for a runbook."""
    from traitlets.config import Config

    if _curve_available(kernel_name):
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    if os.name == "posix":
        return Config({"KernelManager": {"transport": "ipc"}})
    return Config()


def _curve_available(kernel_name: str) -> bool:
    """Whether the manager can provision CurveZMQ keys and the kernel declares it uses them."""
    import zmq
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_client.manager import KernelManager

    if "transport_encryption" not in KernelManager.class_trait_names() or not zmq.has("curve"):
        return False
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        return False
    return "curve" in _lowered(spec.metadata.get("supported_encryption"))


def _lowered(value: object) -> set[str]:
    """A kernelspec's supported_encryption, one name or a list, as lower-case names."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set)):
        return set()
    return {str(item).strip().lower() for item in items}
