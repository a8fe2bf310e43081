"""What unauthenticated endpoints and logs may show of a URI or an error: no secrets.

A tracking URI can carry a login (``http://user:password@mlflow:5000``,
``postgresql://mlflow:secret@db/mlflow``) and a download URL a signature
(``...?X-Amz-Signature=...``). :func:`redact_uri` keeps the scheme, host, port and path
and replaces the userinfo and every secret-looking query value with ``***``;
:func:`redact_text` does the same to every URI inside a free-form message (an exception's
text, before it is logged).

``/model``, ``/ready`` and ``/predict``'s 503 show a redacted source and a short reason
(see :mod:`skin_mlops.api.model_runtime`), never an exception's raw text.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"
_URI_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>()\[\]{},]+")
_SECRET_KEY = re.compile(
    r"token|secret|passw|pwd|key|sig|credential|auth|session|sas|code", re.IGNORECASE
)


def redact_uri(uri: str) -> str:
    """``uri`` with its userinfo and secret query values masked (other text unchanged).

    >>> redact_uri("http://user:pass@mlflow:5000/api?token=abc&page=2")
    'http://***@mlflow:5000/api?token=***&page=2'
    """
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an invalid IPv6 literal: show nothing of it
        return MASK
    if not parts.scheme or not parts.netloc and not parts.query:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{quote(key, safe='')}={MASK if _SECRET_KEY.search(key) else quote(value, safe='')}"
            for key, value in pairs
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """``text`` with every URI in it passed through :func:`redact_uri`."""
    return _URI_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), text)
