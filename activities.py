"""The activities the example pipelines run: the package's generic SkyPilot activities.

SkyPilotPlugin registers them on the worker (run_worker.py); a pipeline calls them through its
building blocks (skypilot_temporal.workflow), never by name. Each is a thin call of the SkyPilot
client SDK against the API server:

    fetch_tasks        clone the task repository at a ref, read and check the task YAMLs
    launch_task        sky.launch a task on its cluster (re-attaching to a job already running)
    exec_task          sky.exec a task on a cluster that is up
    down_cluster       sky.down a cluster (and cancel any launch of it still in flight)
    remove_checkout    remove the run's checkout
    submit_managed_job / follow_managed_job / cancel_managed_job    sky.jobs.*
"""

from skypilot_temporal.activity.activities import SkyPilotActivities

__all__ = ["SkyPilotActivities"]
