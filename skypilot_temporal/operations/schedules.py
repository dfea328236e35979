"""Recurring runs: a Temporal Schedule that starts the pipeline (or a sweep) on a cron or an interval.

run_workflow.py --schedule "0 3 * * *" --schedule-id nightly  creates the schedule, or updates it
when it exists (keeping it paused if it was). Each run it starts gets its own workflow id
("nightly-2026-11-24T03:00:00Z"), so its own clusters. Everything else (list, describe, pause,
trigger, backfill, delete) is Temporal's: the `temporal schedule` CLI and the Web UI's Schedules
page.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from skypilot_temporal.errors import ConfigError

OVERLAP_POLICIES = {
    "skip": ScheduleOverlapPolicy.SKIP,  # a run still going: the next one is not started
    "buffer-one": ScheduleOverlapPolicy.BUFFER_ONE,  # ... started once it ends (one at most)
    "allow-all": ScheduleOverlapPolicy.ALLOW_ALL,  # runs overlap freely
}
_DURATION_PART = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SCHEDULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_EVERY = timedelta(days=366)
# Runs missed while Temporal was down are started afterwards only if due this recently: at most
# about one per outage, never a burst of clusters after a long one.
MAX_CATCHUP = timedelta(days=1)
MIN_CATCHUP = timedelta(minutes=1)


def parse_every(text: str) -> timedelta:
    """An interval such as 6h, 30m, 1d or 1h30m (ConfigError if it is not one)."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ConfigError(f"--every {text!r}: use a duration such as 30m, 6h, 1d or 1h30m")
    seconds = sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not 1 <= seconds <= MAX_EVERY.total_seconds():
        raise ConfigError(f"--every {text!r}: must be between 1s and {MAX_EVERY.days}d")
    return timedelta(seconds=seconds)


@dataclass
class ScheduleRequest:
    schedule_id: str
    cron: str = ""
    every: timedelta | None = None
    overlap: str = "skip"

    def spec(self) -> ScheduleSpec:
        if self.every is not None:
            return ScheduleSpec(intervals=[ScheduleIntervalSpec(every=self.every)])
        return ScheduleSpec(cron_expressions=[self.cron])

    def catchup_window(self) -> timedelta:
        return min(max(self.every or MAX_CATCHUP, MIN_CATCHUP), MAX_CATCHUP)

    def when(self) -> str:
        if self.every is not None:
            return f"every {self.every}"
        zoned = self.cron.startswith(("CRON_TZ=", "TZ="))  # Temporal's own time zone prefix
        return f"cron '{self.cron}'" + ("" if zoned else " (UTC)")

    def check(self) -> None:
        if not SCHEDULE_ID.fullmatch(self.schedule_id):
            raise ConfigError(
                f"--schedule-id {self.schedule_id!r}: use letters, digits, '.', '_' and '-' (at most 100)"
            )
        if self.overlap not in OVERLAP_POLICIES:
            raise ConfigError(f"--overlap {self.overlap!r}: one of {', '.join(OVERLAP_POLICIES)}")


async def create_or_update(
    client: Client, request: ScheduleRequest, action: ScheduleActionStartWorkflow
) -> str:
    """Create the schedule, or replace the existing one's spec, action and overlap policy
    (keeping its state, e.g. paused, and the rest of its policy): "created" or "updated"."""
    schedule = Schedule(
        action=action,
        spec=request.spec(),
        policy=SchedulePolicy(
            overlap=OVERLAP_POLICIES[request.overlap], catchup_window=request.catchup_window()
        ),
    )
    try:
        await client.create_schedule(request.schedule_id, schedule)
        return "created"
    except ScheduleAlreadyRunningError:
        pass

    def keep_its_state(existing: ScheduleUpdateInput) -> ScheduleUpdate:
        current = existing.description.schedule
        schedule.state = current.state
        schedule.policy = dataclasses.replace(
            current.policy, overlap=schedule.policy.overlap, catchup_window=schedule.policy.catchup_window
        )
        return ScheduleUpdate(schedule=schedule)

    await client.get_schedule_handle(request.schedule_id).update(keep_its_state)
    return "updated"
