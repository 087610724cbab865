"""`sagan login`, `sagan jobs` and `sagan datasets`: a command-line client of the job service's REST API.

Torch-free and service-free: it speaks HTTP (httpx) and reads config flags with sagan_core.config, so it
installs and runs on a laptop that only submits jobs.
"""
