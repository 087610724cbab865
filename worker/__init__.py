"""The Celery worker: claims jobs and supervises their training or sampling processes.

Never imports torch: the training runs in a separate process tree launched with torchrun.
"""
