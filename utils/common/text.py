"""Text from data (class names, file names, annotation fields) made safe to print, log or draw.

A class name is whatever a dataset, a checkpoint or an ONNX file says it is: it can hold terminal escape sequences
(ESC [2J clears the screen, ESC ]0; sets the window title), bidirectional overrides that make a line read
differently than it is, or a megabyte of text. `printable` is the one helper that makes such text harmless: control
and format characters become visible escapes (\\x1b, \\u202e), and it is cut to a length with the count of what was
cut. `EscapingFormatter` does the same for every log line (console and train.log), so a name that reaches a log
through any message is escaped too.
"""
from __future__ import annotations

import logging
import unicodedata

NAME_LIMIT = 60  # characters of a name shown in a line of text or a picture
LOG_MESSAGE_LIMIT = 4000  # characters of one log message (a traceback after it is kept whole)
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # controls, format (bidi), surrogates, unassigned


def printable(text: object, limit: int | None = NAME_LIMIT, keep_newlines: bool = False) -> str:
    """`text` with control and format characters escaped (\\x1b, \\u202e) and, past `limit` characters, cut with
    '... (N characters)'. Letters of every script stay as they are. keep_newlines: for multi-line messages."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... ({len(text)} characters)"
    if text.isprintable():
        return text
    return "".join(_escape(c, keep_newlines) for c in text)


def _escape(char: str, keep_newlines: bool) -> str:
    if keep_newlines and char in "\n\t":
        return char
    if char.isprintable() or unicodedata.category(char) not in _UNSAFE_CATEGORIES and char != "\t":
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


class EscapingFormatter(logging.Formatter):
    """A logging.Formatter whose message part goes through `printable` (escaped, cut at LOG_MESSAGE_LIMIT, line
    breaks kept); the traceback of an exception is appended as it is."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        safe = printable(message, LOG_MESSAGE_LIMIT, keep_newlines=True)
        if safe != message:
            record = logging.makeLogRecord({**record.__dict__, "msg": safe, "args": None})
        return super().format(record)
