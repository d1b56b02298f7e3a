"""Credentials in server addresses: taken out to be sent as Basic auth, and never written anywhere.

A user may name a server as ``https://user:password@host/v1``. The password goes to that server
only: every log line, journal, manifest, MLflow param and exported file gets ``redact``'s form of
the address, and the HTTP engines send the credentials as an Authorization header. Here, below every
layer, because each layer that writes an address (storage's manifests, the LLM layer's cost
notices, tracking's params and tags) must redact it the same way.
"""
from __future__ import annotations

import base64
import urllib.parse


def split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its user:password part, and that part as a Basic auth token (None without).

    http.client would read ``user:pw@host`` as the host name, and aiohttp refuses a URL with
    credentials next to an Authorization header: the credentials are taken out and sent the way
    servers behind a password (nginx, Caddy, a cloud gateway) expect them."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    host = parts.hostname or ""
    if ":" in host:   # an IPv6 address
        host = f"[{host}]"
    port = parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
    if port:
        host += f":{port}"
    bare = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def odd_credentials(url: str) -> bool:
    """An address whose user:password part the URL parser cannot see, because the password holds a
    character that ends the host part ('/', '?', '#') unencoded: sending it would mean a wrong host, and
    printing it would show the password."""
    rest = url.partition("://")[2]
    return "@" in rest and urllib.parse.urlsplit(url).username is None


def redact(url: str | None) -> str:
    """``url`` fit to print or store: without its user:password part (the rest of it is no secret).
    An address with an '@' that the parser does not read as credentials loses everything before it."""
    if not url:
        return ""
    if odd_credentials(url):
        head, _, rest = url.partition("://")
        return f"{head}://{rest.rpartition('@')[2]}"
    try:
        return split_credentials(url)[0]
    except ValueError:
        return url.partition("://")[0] + "://(an address that cannot be read)"
