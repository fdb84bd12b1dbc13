"""Connections to Redis: the URL in the settings, else the embedded server. Every client is made here.

The embedded server (`groundwatch up`) records its port and pid in ``<data_dir>/server.json``,
with its CA and client certificate when it runs TLS and whether it was secured
(`up --secure`: every user has a password, kept in ``<data_dir>/credentials.json``, mode 0600);
clients find it there and log in as ``settings.redis_user`` (default: operator). A URL may carry
an ACL user and password (``redis://user:pw@host:port/0``) and ``rediss://`` selects TLS, with
the server's certificate and host name verified against ``settings.tls_ca_cert`` (default: the
embedded server's CA, else the system's CAs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

from groundwatch.errors import ConfigError, ServerError
from groundwatch.settings import Settings

DEFAULT_USER = "operator"  # whom the CLI logs in as on a secured embedded server


@dataclass(frozen=True)
class EmbeddedInfo:
    port: int
    pid: int
    data_dir: Path
    ca_cert: Path | None = None  # set when the server speaks TLS only
    client_cert: Path | None = None  # set when it demands client certificates (mutual TLS)
    client_key: Path | None = None
    secure: bool = False  # users have passwords, in credentials_file()

    @property
    def url(self) -> str:
        """The URL without credentials."""
        scheme = "rediss" if self.ca_cert else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"


def state_file(settings: Settings) -> Path:
    return settings.data_dir / "server.json"


def credentials_file(settings: Settings) -> Path:
    """Passwords of the embedded server's users, {user: password} (mode 0600)."""
    return settings.data_dir / "credentials.json"


def write_embedded(
    settings: Settings,
    port: int,
    pid: int,
    *,
    ca_cert: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    secure: bool = False,
) -> None:
    paths = {"ca_cert": ca_cert, "client_cert": client_cert, "client_key": client_key}
    state: dict[str, Any] = {"port": port, "pid": pid, "secure": secure}
    state.update({k: str(v) for k, v in paths.items() if v is not None})
    state_file(settings).write_text(json.dumps(state))


def read_embedded(settings: Settings) -> EmbeddedInfo | None:
    """The embedded server recorded under data_dir, if its process is still alive."""
    try:
        state = json.loads(state_file(settings).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None

    def path(name: str) -> Path | None:
        return Path(state[name]) if state.get(name) else None

    return EmbeddedInfo(
        port=int(state["port"]),
        pid=int(state["pid"]),
        data_dir=settings.data_dir,
        ca_cert=path("ca_cert"),
        client_cert=path("client_cert"),
        client_key=path("client_key"),
        secure=bool(state.get("secure")),
    )


def read_credentials(path: Path) -> dict[str, str]:
    """{user: password} from a credentials file (a JSON object); {} when it does not exist."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(
            f'credentials file {path} is not readable JSON ({e}); it holds {{"user": "password", ...}}'
        ) from e
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f'credentials file {path} must hold a JSON object {{"user": "password", ...}}')
    return {str(k): v for k, v in data.items()}


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file left over from a crash
    os.replace(tmp, path)


def write_credentials(path: Path, passwords: dict[str, str]) -> None:
    """Merge `passwords` into the credentials file (mode 0600)."""
    merged = {**read_credentials(path), **passwords}
    write_private(path, json.dumps(merged, indent=1, sort_keys=True) + "\n")


def without_credentials(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def user_url(base: str, user: str, password: str) -> str:
    """`base` (scheme://host:port/db, no credentials) with user:password in it."""
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"


def redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    info = read_embedded(settings)
    if info is None:
        raise ServerError(
            f"no Redis to talk to: REDIS_URL is not set and no embedded server runs under "
            f"{settings.data_dir}/. Start one with `groundwatch up`, or set REDIS_URL=redis://host:port"
        )
    if not info.secure:
        return info.url
    user = settings.redis_user or DEFAULT_USER
    passwords = read_credentials(credentials_file(settings))
    if user not in passwords:
        raise ConfigError(
            f"the embedded server is secured, but {credentials_file(settings)} holds no password for "
            f"user {user!r} (it has: {', '.join(sorted(passwords)) or 'none'}). Choose one with "
            "GROUNDWATCH_REDIS_USER, or create the role users with `groundwatch acl apply`"
        )
    return user_url(info.url, user, passwords[user])


def tls_options(settings: Settings, url: str) -> dict[str, Any]:
    """redis-py's ssl_* arguments for a rediss:// URL: verify the certificate AND the host name."""
    if not url.startswith("rediss://"):
        if settings.tls_cert is not None:
            raise ConfigError(
                f"a client certificate is set (GROUNDWATCH_TLS_CERT) but {redact(url)} is not TLS; "
                "use rediss://"
            )
        return {}
    info = read_embedded(settings)
    ca = settings.tls_ca_cert or (info.ca_cert if info else None)
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and info is not None and info.client_cert is not None:
        cert, key = info.client_cert, info.client_key
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if ca is not None:
        options["ssl_ca_certs"] = str(ca)
    if cert is not None:
        options["ssl_certfile"], options["ssl_keyfile"] = str(cert), str(key)
    return options


def local_url(port: int) -> str:
    """The URL of a plain server on this machine's loopback (a bench's or a test's own)."""
    return f"redis://127.0.0.1:{port}/0"


def client_for(
    url: str,
    *,
    settings: Settings | None = None,
    decode_responses: bool = False,
    timeout_s: float | None = 30.0,
) -> redis.Redis:
    """A client of `url`, TLS verified as `settings` say, without connect()'s first PING (for
    clients made in a loop or a child process against a server known to run)."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode_responses,
        socket_timeout=timeout_s,
        health_check_interval=30,
        **tls_options(settings or Settings(), url),
    )


def connect(
    settings: Settings, *, decode_responses: bool = False, timeout_s: float = 30.0, url: str | None = None
) -> redis.Redis:
    """A client for the configured Redis (or `url`); raises ServerError with a fix when it is
    unreachable or refuses the credentials."""
    url = url or redis_url(settings)
    client = client_for(url, settings=settings, decode_responses=decode_responses, timeout_s=timeout_s)
    try:
        client.ping()
    except redis.AuthenticationError as e:
        raise ServerError(
            f"Redis at {redact(url)} refused the login: {e}. Check the user:password in REDIS_URL "
            f"(or {credentials_file(settings)} for the embedded server)"
        ) from e
    except redis.RedisError as e:
        hint = "Is it running?"
        text = str(e).lower()
        if "certificate" in text or "ssl" in text:
            hint = (
                "The TLS handshake failed: give the CA that signed the server's certificate with "
                "GROUNDWATCH_TLS_CA_CERT (and a client certificate with GROUNDWATCH_TLS_CERT/_KEY if "
                "the server demands one); the host name in the URL must be one the certificate names"
            )
        elif "noauth" in text or "authentication required" in text:
            hint = "The server wants a password: put user:password in REDIS_URL"
        elif url.startswith("redis://") and "connection reset" in text:
            hint = "Does the server speak TLS only? Then use rediss://"
        raise ServerError(f"cannot reach Redis at {redact(url)}: {e}. {hint}") from e
    return client


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
