"""The web pages: HTML shells (Jinja2) whose small scripts read the public REST API, as `curl` would.

    /                  jobs, newest first, refreshing while any runs
    /ui/jobs/{id}      one job: progress, charts, sample grids with a step slider, checkpoints, actions
    /ui/submit         a training job's form, built from the OpenAPI schema of POST /jobs
    /ui/static/{name}  the pages' CSS and JavaScript, and Plotly's (served from the installed package)
"""

from __future__ import annotations

from api.ui.routes import router

__all__ = ["router"]
