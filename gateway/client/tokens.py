"""The token file: one login per gateway URL, readable by its owner only (docs/cli.md#tokens).

`tokens.json` in `platformdirs.user_config_dir("gw")` (~/.config/gw on Linux, honouring
XDG_CONFIG_HOME), the folder 0700 and the file 0600, written whole to a temporary file and
renamed over the old one, so that a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import platformdirs

FILE_NAME = "tokens.json"


def default_path() -> Path:
    """Return where the tokens are kept for this user."""
    return Path(platformdirs.user_config_dir("gw")) / FILE_NAME


def server_key(url: str) -> str:
    """Return the key of a gateway URL: scheme and host lower-cased, no trailing slash."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class Login:
    """A token kept for one gateway, and the user it was issued to."""

    username: str
    token: str


class TokenStore:
    """The logins kept in one file, keyed by gateway URL."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()

    def get(self, url: str) -> Login | None:
        """Return the login kept for `url`, if any."""
        entry = self._read().get(server_key(url))
        if not isinstance(entry, dict):
            return None
        username, token = entry.get("username"), entry.get("token")
        if not isinstance(token, str) or not token:
            return None
        return Login(username if isinstance(username, str) else "", token)

    def put(self, url: str, login: Login) -> None:
        """Keep `login` for `url`, replacing the one kept before."""
        servers = self._read()
        servers[server_key(url)] = {"username": login.username, "token": login.token}
        self._write(servers)

    def remove(self, url: str) -> bool:
        """Forget the login for `url`; tell whether there was one. An empty file is deleted."""
        servers = self._read()
        if servers.pop(server_key(url), None) is None:
            return False
        if servers:
            self._write(servers)
        else:
            self.path.unlink(missing_ok=True)
        return True

    def _read(self) -> dict:
        try:
            document = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError):
            # Unreadable or damaged: treated as empty, and the next login rewrites it whole.
            return {}
        servers = document.get("servers") if isinstance(document, dict) else None
        return dict(servers) if isinstance(servers, dict) else {}

    def _write(self, servers: dict) -> None:
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # also when it existed: the folder holds credentials
        # mkstemp creates the file 0600 whatever the umask; the rename makes it appear whole.
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tokens-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(orjson.dumps({"servers": servers}, option=orjson.OPT_INDENT_2))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
