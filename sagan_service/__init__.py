"""The job service's shared core: settings, database, job state transitions and the artifact store.

The API (`api/`), the Celery worker (`worker/`) and the reaper all go through this package, so a job's
state changes in exactly one place. Nothing here imports torch.
"""
