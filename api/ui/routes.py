from __future__ import annotations

from pathlib import Path
from typing import get_args

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from api.schemas import Kind, Status
from api.ui.assets import asset_url, serve_asset
from api.ui.form import train_form

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.globals["asset_url"] = asset_url
router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)


@router.get("/")
async def jobs_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "jobs.html",
                                      {"page": "jobs", "statuses": get_args(Status), "kinds": get_args(Kind)})


@router.get("/ui/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> Response:
    return templates.TemplateResponse(request, "job.html", {"page": "job", "job_id": job_id})


@router.get("/ui/submit")
async def submit_page(request: Request) -> Response:
    form = train_form(request.app.openapi())  # the schema /openapi.json publishes, built once per app
    defaults = {field.name: field.default for field in form.first + form.common + form.rest}
    return templates.TemplateResponse(request, "submit.html",
                                      {"page": "submit", "form": form, "defaults": defaults})


@router.get("/ui/datasets")
async def datasets_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "datasets.html", {"page": "datasets"})


@router.get("/ui/datasets/{dataset_id}")
async def dataset_page(request: Request, dataset_id: str) -> Response:
    return templates.TemplateResponse(request, "dataset.html", {"page": "dataset", "dataset_id": dataset_id})


@router.get("/ui/static/{name}")
def static_file(name: str, request: Request) -> Response:  # a thread: the first request reads and gzips
    return serve_asset(name, request)
