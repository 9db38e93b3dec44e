"""Hiding secrets from everything a user or a log can see.

One place for the rules, so every message path (provider errors, database errors, the CLI's
summary) hides the same things: API keys and bearer tokens, and the password of any database URL,
in every shape libpq accepts (URI userinfo, ``?password=``, ``password=`` keywords).
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode

import psycopg.conninfo

__all__ = ["scrub", "mask_url", "mask_secrets"]

_SECRET = re.compile(r"(sk-|Bearer\s+)[A-Za-z0-9_\-*.]{3,}")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"""(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]*)""", re.IGNORECASE)
_SECRET_PARAMS = {"password", "sslpassword"}
# "user:secret@host" anywhere, URL or not (a mistyped "postgresql//u:pw@db" is no URL, but its
# password is still one); the secret runs to the last "@" before the host, as in mask_url.
_CREDENTIALS = re.compile(r"(?P<user>[\w.%+-]+):(?P<secret>[^\s'\"/][^\s'\"]*)@(?P<host>[^\s'\"@]+)")


def scrub(text: str) -> str:
    """Mask anything shaped like an API key or bearer token."""
    return _SECRET.sub(lambda m: m.group(1) + "***", text)


def mask_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***``: URI userinfo, ``?password=`` and ``password=`` keywords.

    Errs on the side of hiding: in a URI the userinfo is taken up to the *last* ``@`` before the
    query string, so a password containing unescaped ``@`` or ``/`` is still masked whole.
    """
    if url is None:
        return ""
    url = str(url)
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)$", url, re.DOTALL)
    if not match:  # a keyword/value conninfo string, or something mistyped
        return _hide_credentials(_KEYWORD_PASSWORD.sub(lambda m: m.group(1) + "***", url))
    scheme, rest = match.groups()
    query = ""
    qpos = rest.find("?")
    if qpos >= 0:
        rest, query = rest[:qpos], rest[qpos + 1 :]
    at = rest.rfind("@")
    if at >= 0:
        userinfo, hostpart = rest[:at], rest[at + 1 :]
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
            if password:
                userinfo = f"{user}:***"
        rest = f"{userinfo}@{hostpart}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="/:*")
        return _hide_parsed_password(url, f"{scheme}{rest}?{query}")
    return _hide_parsed_password(url, f"{scheme}{rest}")


def _hide_parsed_password(url: str, masked: str) -> str:
    """Mask the password exactly as libpq parses it too (it reads up to the ``@``, so a password
    holding an unescaped ``?`` escapes the URI-shaped rules above)."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except Exception:  # not a conninfo libpq accepts: the rules above are all we have
        return masked
    if password:
        for form in {str(password), quote(str(password), safe="")}:
            masked = masked.replace(f":{form}@", ":***@")  # only where it stands as the password
    return masked


def _hide_credentials(text: str) -> str:
    return _CREDENTIALS.sub(lambda m: f"{m['user']}:***@{m['host']}", text)


def mask_secrets(text: str) -> str:
    """``text`` with key-shaped tokens hidden, any URL's password masked, and any ``user:secret@host``
    or ``password=…`` left outside a URL (a mistyped URL is still a secret's carrier)."""
    masked = _URL.sub(lambda m: mask_url(m.group(0)), scrub(text))
    return _hide_credentials(_KEYWORD_PASSWORD.sub(lambda m: m.group(1) + "***", masked))
