from __future__ import annotations

from fastapi import APIRouter

from api.schemas import Study, StudyArm, StudyList
from sagan_core.studies import STUDIES

router = APIRouter(prefix="/studies", tags=["config"])


@router.get("", response_model=StudyList)
def list_studies() -> StudyList:
    """The named studies a sweep's `study` picks: each one's base preset, question and arms."""
    return StudyList(items=[Study(name=study.name, base=study.base, question=study.question,
                                  arms=[StudyArm(**arm.to_dict()) for arm in study.arms])
                            for study in STUDIES.values()])
