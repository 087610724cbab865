"""An HTTP client of the job service: requests with the token, answers as JSON, every failure as one line
in the server's own words (ClientError)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

import httpx


def route(*parts: str) -> str:
    """An API path from its parts, each quoted (an id never reaches another route)."""
    return "".join("/" + quote(str(part), safe="") for part in parts)


class ClientError(Exception):
    """A request that did not succeed; str() is one line for the user (the server's detail, or why no
    answer came). `status`: the HTTP status, None when no answer came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """No answer, or the API saying a dependency is away for now: worth asking again shortly."""
        return self.status in (None, 502, 503, 504)


class SaganClient:
    """The REST API at `url`, as the holder of `token` (None: a server with SAGAN_AUTH=none)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.token = token
        # No default Authorization header: presigned S3 links (sample grids, checkpoints) must not get it.
        self.http = httpx.Client(timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body).json()

    def request(self, method: str, path_or_url: str, **kwargs: Any) -> httpx.Response:
        url = self._absolute(path_or_url)
        try:
            response = self.http.request(method, url, headers=self._headers(url), **kwargs)
        except httpx.HTTPError as error:
            raise ClientError(f"no answer from {self.url}: {error or type(error).__name__}") from None
        if response.is_error:
            raise ClientError(error_message(response), response.status_code)
        return response

    def download(self, path_or_url: str, target: Path) -> Path:
        """Stream one file (an API route, or a link the API handed out, following its redirects) to `target`,
        written whole or not at all."""
        url = self._absolute(path_or_url)
        partial = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.http.stream("GET", url, headers=self._headers(url)) as response:
                if response.is_error:
                    response.read()
                    raise ClientError(error_message(response), response.status_code)
                with open(partial, "wb") as out:
                    out.writelines(response.iter_bytes(1 << 20))
        except httpx.HTTPError as error:
            partial.unlink(missing_ok=True)
            why = error or type(error).__name__
            raise ClientError(f"download of {urlsplit(url).path} failed: {why}") from None
        os.replace(partial, target)
        return target

    def stream(self, path: str, **params: Any) -> Iterator[bytes]:
        """An answer's body in parts as they arrive (a followed log); no read timeout, since a quiet
        stream may send nothing for minutes."""
        url = self._absolute(path)
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        try:
            with self.http.stream("GET", url, headers=self._headers(url), timeout=timeout,
                                  params={k: v for k, v in params.items() if v is not None}) as response:
                if response.is_error:
                    response.read()
                    raise ClientError(error_message(response), response.status_code)
                yield from response.iter_raw()
        except httpx.HTTPError as error:
            raise ClientError(f"the stream from {self.url} broke off: "
                              f"{error or type(error).__name__}") from None

    def _absolute(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else self.url + path_or_url

    def _headers(self, url: str) -> dict[str, str]:
        # The token goes to this server only (httpx also drops it on a redirect to another origin).
        same_server = urlsplit(url)[:2] == urlsplit(self.url)[:2]
        return {"Authorization": f"Bearer {self.token}"} if self.token and same_server else {}


def error_message(response: httpx.Response) -> str:
    """One line: a 422's first field and message, another error's `detail` (a 429's with its Retry-After),
    or the status when the answer is no JSON (a proxy's page, S3's XML)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        text = _validation_issue(detail[0])
    elif isinstance(detail, str) and detail:
        text = detail
    else:
        text = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    retry_after = response.headers.get("Retry-After")
    if response.status_code in (429, 503) and retry_after:
        text += f" (retry after {retry_after} s)"
    return " ".join(text.split())  # one line, whatever the server put in it


def _validation_issue(issue: dict[str, Any]) -> str:
    """`field: message`, the field being the loc's last part (what the user wrote: `steps`, not
    `body.config.steps`); the server's SpecError messages already start with it."""
    loc = [str(part) for part in issue.get("loc", []) if part != "body"]
    message = str(issue.get("msg", "invalid request"))
    field = loc[-1] if loc else ""
    if not field or message.startswith((f"{field}:", f"{field} ")):
        return message
    return f"{field}: {message}"
