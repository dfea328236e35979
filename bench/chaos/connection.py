"""A Temporal client for the soak that rides out the dev server's restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from testing.local_stack import TEMPORAL_ADDRESS


class TemporalConnection:
    def __init__(self) -> None:
        self._client: Any = None

    async def client(self) -> Any:
        """A connected client; reconnects after Temporal restarts. Raises while it is down."""
        from temporalio.client import Client

        from skypilot_temporal.trust.codec import configured_data_converter

        if self._client is None:
            converter = configured_data_converter()
            self._client = await asyncio.wait_for(
                Client.connect(TEMPORAL_ADDRESS, data_converter=converter), 10
            )
        return self._client

    def forget(self) -> None:
        """The next call connects again (after a call failed for want of Temporal)."""
        self._client = None

    async def call(self, action: Callable[[Any], Any], timeout: float = 15) -> Any:
        """`action(client)` with a timeout; a failed call (not a failed run) reconnects next time."""
        from temporalio.client import WorkflowFailureError

        try:
            return await asyncio.wait_for(action(await self.client()), timeout)
        except WorkflowFailureError:
            raise
        except Exception:
            self.forget()
            raise

    async def exists(self, workflow_id: str) -> bool:
        try:
            await self.call(lambda c: c.get_workflow_handle(workflow_id).describe())
        except Exception:
            return False
        return True
