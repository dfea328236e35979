"""What a platform needs to test its own pipelines without SkyPilot: a fake of the SkyPilot client
SDK (as strict as SkyPilot about users, cancels and request ids) and an in-process worker."""

from skypilot_temporal.testing.fake_sky import FakeServer, FakeSky, JobPlan
from skypilot_temporal.testing.in_process import make_git_repo, running_worker, start_dev_server

__all__ = ["FakeServer", "FakeSky", "JobPlan", "make_git_repo", "running_worker", "start_dev_server"]
