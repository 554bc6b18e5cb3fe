"""Key hygiene: checking a key read from the environment and scrubbing it from text.

The client checks the key before any request is built (:func:`check_key_value`), so a key
with a trailing newline never reaches h11, whose error messages quote header values. Should a
key reach an exception or a log record anyway (a custom provider, a provider echoing it),
:class:`KeyRedactor` replaces every form of it: as is, stripped, URL-encoded, JSON- and
repr-escaped, and as a ``bytes`` repr (how h11 quotes a header).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import httpx

REDACTED = "[redacted]"

# Things that look like API keys in text a provider sends back ("Incorrect API key provided:
# sk-proj-abc...wxyz"): scrubbed even when they are only a masked fragment of our key.
_KEYLIKE = re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_*.\-]{6,}")

# Request headers that carry credentials, redacted in an exception's request whatever they hold.
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key"}
)

# Every logger that may format text holding a key: ours, httpx's, and httpcore's (whose
# DEBUG trace quotes the exception a failed header write raised).
_LOGGERS = (
    "arboretum.llm",
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def check_key_value(value: str) -> str | None:
    """What is wrong with a key read from the environment, or ``None``; never quotes it."""
    if value.strip() != value:
        if value.rstrip("\r\n") != value:
            return (
                "ends with a line break (\\n or \\r\\n, as when a key is read from a file or "
                "a .env file with Windows line endings)"
            )
        return "starts or ends with whitespace"
    if not value.isascii():
        return "holds non-ASCII characters (a smart quote or a non-breaking space pasted in?)"
    if any(c < " " or c == "\x7f" for c in value):
        return "holds a control character (a line break, a tab or a NUL)"
    if " " in value:
        return "holds a space"
    return None


def scrub_keylike(text: str) -> str:
    """Replace anything that looks like a provider key (``sk-...``) with ``[redacted]``."""
    return _KEYLIKE.sub(REDACTED, text)


def safe_url(url: str) -> str:
    """``url`` without its user part, query and fragment, which may hold credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        bare = re.sub(r"//[^/]*@", "//", re.split(r"[?#]", url, maxsplit=1)[0])
        return scrub_keylike(bare)[:200]
    netloc = parts.netloc.rpartition("@")[2]
    return scrub_keylike(urlunsplit((parts.scheme, netloc, parts.path, "", "")))[:200]


def key_forms(key: str) -> tuple[str, ...]:
    """Every spelling of ``key`` that may show up in text, longest first."""
    forms: set[str] = set()
    for k in {key, key.strip()}:
        if not k:
            continue
        forms.update(
            {
                k,
                quote(k, safe=""),
                quote_plus(k),
                json.dumps(k)[1:-1],
                json.dumps(k, ensure_ascii=False)[1:-1],
                repr(k)[1:-1],
                repr(k.encode("utf-8", "surrogatepass"))[2:-1],
                k.replace("/", "\\/"),  # JSON encoders that escape slashes
            }
        )
    forms.discard("")
    return tuple(sorted(forms, key=len, reverse=True))


def _scrub(text: str, forms: tuple[str, ...]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, REDACTED)
    return scrub_keylike(text)


class KeyRedactor:
    """Scrubs one key (every form of it) from text, exceptions and, while active, log records.

    Args:
        key: the key, or ``None`` (then only key-like text is scrubbed).
    """

    # Forms of the keys of requests in flight, counted, for the log filter.
    _active: ClassVar[dict[str, int]] = {}
    _installed: ClassVar[bool] = False

    def __init__(self, key: str | None) -> None:
        self._forms = key_forms(key) if key else ()

    def scrub(self, text: str) -> str:
        """``text`` with every form of the key, and anything key-like, replaced."""
        return _scrub(text, self._forms)

    def leaks(self, exc: BaseException) -> bool:
        """Whether ``str``, ``repr``, ``args`` or the attributes of ``exc`` hold the key."""
        if not self._forms:
            return False
        try:
            text = f"{exc}\n{exc!r}\n{exc.args!r}\n{getattr(exc, '__dict__', {})!r}"
        except Exception:
            return True  # cannot tell: treat it as leaking
        return any(form in text for form in self._forms)

    def clean(self, exc: BaseException) -> BaseException:
        """Scrub ``exc`` and its cause/context chain in place; returns ``exc``.

        String arguments and notes are scrubbed, credentials in an httpx request attached to
        an exception are redacted, and a linked exception that still shows the key (say a
        ``UnicodeEncodeError``, whose ``repr`` quotes the whole string) is cut from the chain.
        """
        seen: set[int] = set()

        def visit(node: BaseException) -> None:
            if id(node) in seen:
                return
            seen.add(id(node))
            self._redact_request(node)
            try:
                node.args = tuple(self.scrub(a) if isinstance(a, str) else a for a in node.args)
            except Exception:  # an exception type with read-only args
                pass
            notes = getattr(node, "__notes__", None)
            if isinstance(notes, list):
                node.__notes__ = [self.scrub(n) if isinstance(n, str) else n for n in notes]
            for link in ("__cause__", "__context__"):
                child = getattr(node, link)
                if child is None:
                    continue
                visit(child)
                if self.leaks(child):
                    setattr(node, link, None)
                    if link == "__context__":
                        node.__suppress_context__ = True

        visit(exc)
        return exc

    def _redact_request(self, exc: BaseException) -> None:
        request = getattr(exc, "__dict__", {}).get("_request")
        if not isinstance(request, httpx.Request):
            return
        for name, value in list(request.headers.items()):
            if name.lower() in _CREDENTIAL_HEADERS or any(f in value for f in self._forms):
                request.headers[name] = REDACTED

    @contextmanager
    def active(self) -> Iterator[None]:
        """While inside, records of the httpx, httpcore and arboretum.llm loggers are scrubbed."""
        active = KeyRedactor._active
        for form in self._forms:
            active[form] = active.get(form, 0) + 1
        try:
            yield
        finally:
            for form in self._forms:
                left = active.get(form, 0) - 1
                if left > 0:
                    active[form] = left
                else:
                    active.pop(form, None)

    @classmethod
    def install(cls) -> None:
        """Add the scrubbing filter to the loggers that may see a key. Idempotent."""
        if cls._installed:
            return
        cls._installed = True
        for name in _LOGGERS:
            logging.getLogger(name).addFilter(_LOG_FILTER)


class _ScrubFilter(logging.Filter):
    """Rewrites a log record whose text holds an active key, or something key-like."""

    def filter(self, record: logging.LogRecord) -> bool:
        forms = tuple(sorted(KeyRedactor._active, key=len, reverse=True))
        try:
            message = record.getMessage()
        except Exception:
            return True
        scrubbed = _scrub(message, forms)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info), forms)
        return True


_LOG_FILTER = _ScrubFilter()
