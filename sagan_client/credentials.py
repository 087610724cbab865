"""Which server and token a command uses: --url/--token, else SAGAN_URL/SAGAN_TOKEN, else the file
`sagan login` wrote (credentials.json in $SAGAN_CONFIG_DIR, default ~/.config/sagan, mode 0600)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .api import ClientError

CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True)
class Server:
    url: str
    token: str | None


def config_dir() -> Path:
    explicit = os.environ.get("SAGAN_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "sagan"


def credentials_path() -> Path:
    return config_dir() / CREDENTIALS_FILE


def save_login(server: Server) -> Path:
    """Write the login file readable by its owner only (it holds a bearer token)."""
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created 0600, and set so again should an older file have had wider permissions.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"url": server.url, "token": server.token}, out)
        out.write("\n")
    return path


def load_login() -> Server | None:
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
        return Server(url=str(data["url"]), token=data.get("token"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ClientError(f"cannot read {path} ({error}): run `sagan login URL` again") from None


def resolve_server(url: str | None, token: str | None) -> Server:
    """The flags over the environment over the login file. The file's token goes only to the file's own
    server, never to another URL given by flag or environment."""
    url = url or os.environ.get("SAGAN_URL")
    token = token or os.environ.get("SAGAN_TOKEN")
    login = load_login() if url is None or token is None else None
    if url is None:
        if login is None:
            raise ClientError("no server: give --url, set SAGAN_URL, or run `sagan login URL`")
        url = login.url
    if token is None and login is not None and _same(login.url, url):
        token = login.token
    return Server(url=url.rstrip("/"), token=token)


def _same(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")
