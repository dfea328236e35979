"""Imported at start-up by the SkyPilot API server that scripts/local_stack.sh starts, and only
by it: the stack puts this folder on that server's PYTHONPATH and nowhere else.

SkyPilot's managed-jobs controller checks that the network is up before every status check, with
an HTTPS HEAD to two fixed public IPs (`sky.backends.backend_utils._TEST_IP_LIST`). This machine
cannot reach them, so offline the controller logs "Network is not available" forever and never
notices a finished or preempted job. The check accepts any HTTP answer, so pointing it at the
API server's own URL (SKYPILOT_STACK_NETWORK_CHECK_URL) makes managed jobs work here, and no
traffic goes to a public address. A server with internet access needs none of this.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any

_MODULE = "sky.backends.backend_utils"
_URL = os.environ.get("SKYPILOT_STACK_NETWORK_CHECK_URL", "")


class _NetworkCheckTarget(importlib.abc.MetaPathFinder):
    """Sets the module's `_TEST_IP_LIST` right after SkyPilot's own code defines it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            module._TEST_IP_LIST = [_URL]  # type: ignore[attr-defined]

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if _URL:
    sys.meta_path.insert(0, _NetworkCheckTarget())
