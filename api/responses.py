"""Responses more than one router sends."""

from __future__ import annotations

from fastapi import HTTPException, Response
from fastapi.responses import FileResponse

from sagan_service.storage import ArtifactNotFound, ArtifactStore, LocalStore


def object_response(store: ArtifactStore, key: str, media_type: str) -> Response:
    """A recorded artifact's bytes; 404 if its object is gone from the store (503 while the store is away)."""
    try:
        if isinstance(store, LocalStore):  # streamed from disk, not read into memory
            if not store.exists(key):
                raise ArtifactNotFound(key)  # noqa: TRY301 (the same 404 as a store that lost the object)
            return FileResponse(store.path(key), media_type=media_type)
        return Response(store.get_bytes(key), media_type=media_type)
    except ArtifactNotFound:
        raise HTTPException(404, "this artifact is recorded but its file is gone from the artifact "
                                 "store") from None
