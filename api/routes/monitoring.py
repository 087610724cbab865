from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import PrincipalDep, in_thread

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
@in_thread
def prometheus_metrics(request: Request, principal: PrincipalDep) -> Response:
    """The service's Prometheus metrics (jobs by status, queue wait and run times, failures by cause,
    request latency); needs an admin token, since it counts every owner's jobs. A job's own training
    metrics are at /jobs/{id}/metrics."""
    if not principal.admin:
        raise HTTPException(403, "the service's metrics need an admin token")
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
