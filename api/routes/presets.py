from __future__ import annotations

from fastapi import APIRouter

from api.schemas import Preset, PresetList
from sagan_core.config import PRESETS, make_config

router = APIRouter(prefix="/presets", tags=["config"])


@router.get("", response_model=PresetList)
def list_presets() -> PresetList:
    """The named presets a training job's `config.preset` picks: each one's overrides of the defaults, and
    the full config it gives (what a job's `spec` holds before any field of its own)."""
    return PresetList(items=[Preset(name=name, overrides=overrides, config=make_config(name).to_dict())
                             for name, overrides in PRESETS.items()])
