"""One clear message per failure for the command-line tools.

``reporting_errors`` wraps a tool's work: an exception becomes ``error: <cause>`` on stderr (the
cause first: ``No space left on device: <file>`` rather than the ``unexpected pos`` torch raises on
top of it), the traceback goes to the run's log file (where one is open) and the process exits with
status 1. ``--debug`` lets the exception through with its full traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from collections.abc import Iterator

DEBUG_HINT = "(run again with --debug for the traceback)"
# Causes that say more than any message raised on top of them.
_SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOMEM}
_LOGGERS = ("d2ssl", "detectron2", "fvcore")


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _os_error_text(error: OSError) -> str:
    text = error.strerror or str(error)
    filename = getattr(error, "filename", None)
    return f"{text}: {filename}" if filename else text


def _without_tracebacks(text: str) -> str:
    """Drops the frames of tracebacks quoted in a message (a spawned process's error arrives as
    text), keeping the exception line that ends each."""
    kept, in_traceback = [], False
    for line in text.splitlines():
        if line.strip() == "Traceback (most recent call last):":
            in_traceback = True
            continue
        if in_traceback and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        in_traceback = False
        kept.append(line)
    return "\n".join(kept)


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return _without_tracebacks(str(error)).strip() or type(error).__name__


def summarize(text: str, limit: int = 300) -> str:
    """``text`` on one line, shortened to its first whole sentences within ``limit`` characters (at
    least the first sentence): an explanation quoted into a message is never cut mid-sentence."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    sentences = re.split(r"(?<=[.!?;])\s+", text)
    kept = 1
    while kept < len(sentences) and len(" ".join(sentences[: kept + 1])) <= limit:
        kept += 1
    return " ".join(sentences[:kept]) + (" [...]" if kept < len(sentences) else "")


def describe_error(error: BaseException) -> str:
    """``error`` as one message naming its cause first (a disk-full or permission error anywhere in
    the chain of exceptions leads); the messages of d2ssl's own errors are used as they are."""
    if isinstance(error, OSError) and error.errno is not None:
        return _os_error_text(error)
    system = next(
        (e for e in _chain(error) if isinstance(e, OSError) and e.errno in _SYSTEM_ERRNOS), None
    )
    message = _message(error)
    own = type(error).__module__.startswith("d2ssl")
    if not own and not isinstance(error, (KeyError, ValueError)):
        message = f"{type(error).__name__}: {message}"
    return f"{_os_error_text(system)} ({message})" if system is not None else message


def _log_traceback_to_files(error: BaseException) -> None:
    streams = set()
    record = logging.LogRecord("d2ssl", logging.ERROR, __file__, 0, "failed:", None,
                               (type(error), error, error.__traceback__))
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            name = getattr(stream, "name", None)  # log files only, not the console (``<stderr>``)
            if not isinstance(name, str) or not os.path.isfile(name) or id(stream) in streams:
                continue
            streams.add(id(stream))
            handler.handle(record)


@contextlib.contextmanager
def reporting_errors(debug: bool = False) -> Iterator[None]:
    """Turns an exception raised inside into ``error: <cause>`` on stderr and exit status 1; with
    ``debug`` the exception propagates (full traceback)."""
    try:
        yield
    except Exception as error:
        if debug:
            raise
        _log_traceback_to_files(error)
        print(f"error: {describe_error(error)}\n{DEBUG_HINT}", file=sys.stderr)
        raise SystemExit(1) from None
