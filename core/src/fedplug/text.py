"""Text that came from a peer, made inert before anyone sees it in a terminal or a log.

A plan's source, a class name, a node's name and tags, an error text: each arrives from the other
side of a federation, and a terminal obeys the control characters in it. An escape sequence can
erase the line above it, a carriage return can print over one, a right-to-left override can show
code in another order than Python reads it ("Trojan Source"). :func:`inert` shows such characters
as escapes (``\\x1b``, ``\\u202e``) instead; :func:`unsafe_characters` finds them, to refuse a plan
source that holds any before it is recorded, shown to a reviewer or run.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories a terminal may act on rather than show: controls, formatting (bidi
#: overrides, zero-width characters), line and paragraph separators, surrogates, private use
#: and unassigned code points
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})

#: what ordinary source code may hold among them: newlines, tabs and form feeds (PEP 8's ^L)
SOURCE_WHITESPACE = "\n\t\f"


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _hidden(char: str) -> bool:
    return unicodedata.category(char) in _HIDDEN


def inert(text: object, keep: str = "") -> str:
    """``text`` with every character a terminal could act on shown as an escape, but those in
    ``keep`` (e.g. ``"\\n\\t"`` for a source listing). Backslashes stay as they are."""
    text = str(text)
    if text.isprintable() and not keep:
        return text
    return "".join(_escape(c) if c not in keep and _hidden(c) else c for c in text)


def unsafe_characters(text: str, keep: str = SOURCE_WHITESPACE) -> list[str]:
    """The distinct characters of ``text`` that :func:`inert` would escape (but ``keep``), each
    as its escape, in the order they first appear."""
    found: list[str] = []
    for char in text:
        if char not in keep and _hidden(char):
            escaped = _escape(char)
            if escaped not in found:
                found.append(escaped)
    return found
