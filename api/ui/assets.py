"""The pages' static files: this package's CSS and JavaScript, and Plotly's plotly.min.js from the installed
`plotly` Python package (no CDN: the pages work on a machine with no network).

Each file's URL carries a hash of its content (Plotly's: its version), so a browser may keep it for a year
and still never runs a stale copy after an upgrade. Bodies are read and gzipped once per process, on first
use; plotly.min.js is 4.8 MB, 1.4 MB gzipped.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request, Response

STATIC = Path(__file__).parent / "static"
MEDIA_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
CACHE_FOREVER = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    media_type: str


def _plotly_js() -> Path:
    # The package's location without importing it (its import pulls in narwhals and more).
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is not installed (it ships the charts' JavaScript)")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"


def _files() -> dict[str, Path]:
    files = {path.name: path for path in STATIC.iterdir() if path.suffix in MEDIA_TYPES}
    files["plotly.min.js"] = _plotly_js()
    return files


@functools.cache
def asset_url(name: str) -> str:
    """The versioned URL templates link to (cheap: Plotly's version needs no read of its 4.8 MB)."""
    if name == "plotly.min.js":
        return f"/ui/static/{name}?v={importlib.metadata.version('plotly')}"
    return f"/ui/static/{name}?v={hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]}"


@functools.cache
def _asset(name: str) -> Asset:
    path = _files().get(name)
    if path is None:
        raise KeyError(name)
    body = path.read_bytes()
    return Asset(body, gzip.compress(body, 6), MEDIA_TYPES[path.suffix])


def serve_asset(name: str, request: Request) -> Response:
    """Blocking on a file's first request (read and gzip): call it from a thread."""
    try:
        found = _asset(name)
    except KeyError:
        raise HTTPException(404, f"no static file {name!r}") from None
    headers = {"Cache-Control": CACHE_FOREVER, "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(found.gzipped, media_type=found.media_type,
                        headers={**headers, "Content-Encoding": "gzip"})
    return Response(found.body, media_type=found.media_type, headers=headers)
