"""Credentials never leave in a URI: the one redaction used wherever a URI is stored or shown.

A database URL or storage URI may carry a secret in two places: the password of its userinfo
(``postgresql://user:PASSWORD@host/db``, ``s3://KEY_ID:SECRET@bucket``) and credential-like query
parameters (``?secret_key=...``, a presigned URL's ``X-Amz-Signature``). ``redact_uri`` replaces
exactly those values with ``***`` and leaves every other byte as it was, so a URI without
credentials comes back identical (paths, ``sqlite:///...``, ``s3://bucket/prefix``,
``?endpoint_override=host:port&scheme=http``). It is a display and storage form: a redacted URI
cannot be opened, and is not meant to be.

Only the standard library: every layer of aiinfra may import this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

__all__ = ["MASK", "has_credentials", "redact_text", "redact_uri"]

MASK = "***"

# Query parameters whose value is a credential, compared lower-cased after percent-decoding.
_SECRET_PARAMS = frozenset({
    "password", "passwd", "pwd", "secret", "access_key", "secret_key", "session_token", "token", "sig",
    "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "key", "api_key",
})
# Names built on these words are credentials too (client_secret, access_token, X-Goog-Signature, ...).
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "signature")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# A URI or a path (absolute, home-relative, relative to ".", a Windows drive), not a bare secret.
_LOCATION = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://|[/~.\\]|[A-Za-z]:[\\/]")
# A URI inside free text: a scheme, then everything up to whitespace, a quote, an angle bracket or a backtick.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


def _is_secret_param(name: str) -> bool:
    key = unquote_plus(name).strip().lower()
    return key in _SECRET_PARAMS or any(word in key for word in _SECRET_WORDS)


def _password_span(uri: str) -> tuple[int, int] | None:
    """Start and end of the userinfo's password in ``uri``, or None when it has none (or an empty one)."""
    m = _SCHEME.match(uri)
    if m:
        start = m.end()
    elif uri.startswith("//"):
        start = 2
    else:
        start = 0
    rest = uri[start:]
    # RFC 3986: the authority ends at the first '/', '?' or '#'.
    auth_end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    colon = rest.find(":")
    if colon < 0 or any(c in "/?#@[]" for c in rest[:colon]):
        return None  # no "user:" before anything else: a host, an IPv6 literal or a path
    at = rest.rfind("@", 0, auth_end)  # the last '@' of the authority: a raw '@' may be in the password
    if at < colon and m:
        # A password holding a raw '/' (AWS secret keys do) ends the RFC authority early; drivers such as
        # SQLAlchemy still read it up to the next '@'. Hiding too much beats showing a secret.
        query = next((i for i in range(colon, len(rest)) if rest[i] in "?#"), len(rest))
        at = rest.find("@", colon, query)
    if at < colon or at == colon + 1:
        return None  # no '@' after the colon (host:port), or an empty password
    return start + colon + 1, start + at


def _query_spans(uri: str) -> list[tuple[int, int]]:
    """Start and end of each credential-like query parameter's value in ``uri``."""
    q = uri.find("?")
    if q < 0:
        return []
    end = uri.find("#", q)
    end = len(uri) if end < 0 else end
    spans, pos = [], q + 1
    for param in uri[q + 1 : end].split("&"):
        name, eq, value = param.partition("=")
        if eq and value and _is_secret_param(name):
            spans.append((pos + len(name) + 1, pos + len(param)))
        pos += len(param) + 1
    return spans


def _secret_spans(uri: str) -> list[tuple[int, int]]:
    password = _password_span(uri)
    query = _query_spans(uri)
    if password is not None:
        # A query parameter inside the span already hidden as the password adds nothing.
        query = [s for s in query if s[0] >= password[1]]
        return [password, *query]
    return query


def redact_uri(uri: str) -> str:
    """``uri`` with its password and credential-like query values replaced by ``***``; otherwise unchanged.

    >>> redact_uri("postgresql://aiinfra:hunter2@db:5432/aiinfra")
    'postgresql://aiinfra:***@db:5432/aiinfra'
    >>> redact_uri("s3://lake/aiinfra?endpoint_override=127.0.0.1:9000&secret_key=abc")
    's3://lake/aiinfra?endpoint_override=127.0.0.1:9000&secret_key=***'
    """
    out, last = [], 0
    for start, end in _secret_spans(uri):
        out += [uri[last:start], MASK]
        last = end
    return "".join(out) + uri[last:] if out else uri


def has_credentials(uri: str | None) -> bool:
    """Whether ``uri`` carries a password or a credential-like query parameter (what ``redact_uri`` hides)."""
    return bool(uri and _secret_spans(uri))


def _credential_values(uri: str) -> list[str]:
    """The secrets in ``uri``, as written and percent-decoded (a message may show either)."""
    values = []
    for start, end in _secret_spans(uri):
        raw = uri[start:end]
        values += [raw, unquote(raw), unquote_plus(raw)]
    return values


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every URI in it redacted and every one of ``secrets`` replaced by ``***``.

    For messages that may embed a raw URI or password: a driver's exception, a subprocess's output.
    A secret that is a location (a URI or a path, such as ``config.metadata_url`` or
    ``config.storage_root``) stays readable: its whole text is replaced by its redacted form, and its
    password and credential values, as written or percent-decoded, are hidden wherever they appear
    alone. Any other secret (a bare password or token) is hidden wherever it appears. Empty and None
    secrets are skipped, so optional settings can be passed as they are.
    """
    bare: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        if has_credentials(secret):
            text = text.replace(secret, redact_uri(secret))
            bare.update(_credential_values(secret))
        elif not _LOCATION.match(secret):
            bare.add(secret)
    text = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    for secret in sorted((s for s in bare if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
