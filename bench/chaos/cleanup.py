"""What the soak leaves behind if its runs did not: launches still in flight, its clusters, and
schedules aimed at its task queue (a reaper's)."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.chaos.connection import TemporalConnection
from bench.chaos.journal import Journal
from bench.chaos.observe import Observer


async def down_own_clusters(sky: Any, observer: Observer, journal: Journal) -> list[str]:
    """sky.down every cluster of the soak still listed, after cancelling launches still in flight."""
    await cancel_own_requests(sky, observer, journal)
    if not await observer.fresh_look():
        journal.note("SkyPilot did not answer at cleanup: check `sky status` for chaos clusters")
        return []
    names = sorted(observer.current)

    async def down(name: str) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(lambda: sky.get(sky.down(name))), 600)
            journal.log(f"cleanup: sky.down {name}")
        except Exception as err:
            journal.note(f"cleanup: sky.down {name} failed: {type(err).__name__}: {str(err)[:200]}")

    await asyncio.gather(*(down(n) for n in names))
    return names


async def cancel_own_requests(sky: Any, observer: Observer, journal: Journal) -> None:
    """An abandoned launch on the API server could bring a cluster back after its sky.down."""
    try:
        pending = await asyncio.wait_for(asyncio.to_thread(sky.api_status), 60)
        ours = [
            r.request_id
            for r in pending
            if r.name in ("sky.launch", "sky.exec") and observer.owner(r.cluster_name or "")
        ]
        if ours:
            await asyncio.wait_for(asyncio.to_thread(lambda: sky.get(sky.api_cancel(ours))), 60)
            journal.log(f"cleanup: cancelled {len(ours)} launch/exec requests still in flight")
    except Exception as err:
        journal.log(f"cleanup: could not check for requests in flight: {type(err).__name__}")


async def delete_own_schedules(temporal: TemporalConnection, task_queue: str, journal: Journal) -> None:
    """Schedules whose action targets our task queue (e.g. a per-queue leak reaper) go with it."""
    try:
        client = await temporal.client()
        async for listing in await client.list_schedules():
            handle = client.get_schedule_handle(listing.id)
            description = await handle.describe()
            if getattr(description.schedule.action, "task_queue", None) == task_queue:
                await handle.delete()
                journal.log(f"cleanup: deleted schedule {listing.id} (task queue {task_queue})")
    except Exception as err:
        journal.log(f"cleanup: could not list schedules: {type(err).__name__}")
