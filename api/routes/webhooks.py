"""A job's webhook deliveries (sagan_service.webhooks): what was sent to its notify URLs and what they
answered."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import OwnerDep, SessionDep, in_thread
from api.schemas import DeliveryList, DeliveryPublic
from sagan_service import jobs, webhooks

router = APIRouter(prefix="/jobs", tags=["webhooks"])


@router.get("/{job_id}/deliveries", response_model=DeliveryList)
@in_thread
def list_deliveries(job_id: str, session: SessionDep, owner: OwnerDep) -> DeliveryList:
    """Each status change of the job, per notify URL: its attempts, the last answer, and whether it
    arrived."""
    job = jobs.get_job(session, job_id, owner=owner)
    return DeliveryList(items=[DeliveryPublic.from_delivery(delivery)
                               for delivery in webhooks.list_deliveries(session, job_id=job.id)])
