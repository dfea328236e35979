"""The chaos soak (`python -m bench.chaos_soak`, see bench/chaos_soak.py), by concern:

- `plan`: the command line, the runs it plans (and their roles), the code the workers run;
- `journal`: the events log, the notes under the table, what the soak counts;
- `connection`: a Temporal client that rides out the dev server's restarts;
- `workers`: the worker processes, killed and restarted;
- `servers`: the API server and Temporal restarts;
- `runs`: starting, cancelling, terminating and watching the pipelines;
- `observe`: what SkyPilot shows while it runs (clusters, jobs, submissions);
- `cleanup`: what the soak leaves behind if its runs did not clean up;
- `results`: the measurement, the table and observations.json.
"""
