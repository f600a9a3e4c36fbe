"""Exceptions: one class per wire error code, and the client's own errors.

A failed request raises the subclass of :class:`CheckpointdError` that matches
the reply's ``code`` (docs/protocol.md, "Error codes"); a code this client does
not know yet raises :class:`CheckpointdError` itself, so new server codes never
break an old client.
"""

from __future__ import annotations

from typing import ClassVar


class CheckpointdError(Exception):
    """An error reply from the server: its wire ``code`` and ``message``."""

    code: str
    message: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _CodedError(CheckpointdError):
    """A :class:`CheckpointdError` whose class fixes the code."""

    CODE: ClassVar[str]

    def __init__(self, message: str) -> None:
        super().__init__(self.CODE, message)


class InvalidJson(_CodedError):
    """The server could not parse what it was sent."""

    CODE = "invalid_json"


class InvalidParams(_CodedError):
    """A parameter is missing, of the wrong type, empty or malformed."""

    CODE = "invalid_params"


class UnknownMethod(_CodedError):
    """The server does not know the method (an older server)."""

    CODE = "unknown_method"


class Unauthorized(_CodedError):
    """No token, or a wrong one, on a server that requires one."""

    CODE = "unauthorized"


class NotFound(_CodedError):
    """The session or checkpoint does not exist (or not in that session)."""

    CODE = "not_found"


class Conflict(_CodedError):
    """The request contradicts stored state."""

    CODE = "conflict"


class TooLarge(_CodedError):
    """A field, or the whole request, is over its limit."""

    CODE = "too_large"


class Compacted(_CodedError):
    """Events after the requested ``since`` are no longer retained."""

    CODE = "compacted"


class Capacity(_CodedError):
    """The server has too many connections, or this one too many subscriptions."""

    CODE = "capacity"


class Unavailable(_CodedError):
    """The store refuses writes (after a disk error) or is shutting down."""

    CODE = "unavailable"


class Internal(_CodedError):
    """A stored record failed its checksum, or a server bug."""

    CODE = "internal"


_BY_CODE: dict[str, type[_CodedError]] = {
    cls.CODE: cls
    for cls in (
        InvalidJson,
        InvalidParams,
        UnknownMethod,
        Unauthorized,
        NotFound,
        Conflict,
        TooLarge,
        Compacted,
        Capacity,
        Unavailable,
        Internal,
    )
}


def error_from_wire(code: str, message: str) -> CheckpointdError:
    """The exception for an error reply with this ``code``."""
    cls = _BY_CODE.get(code)
    return cls(message) if cls is not None else CheckpointdError(code, message)


class ConnectionLost(ConnectionError):
    """The connection to the server dropped (or was closed) before a reply came.

    The request may or may not have been applied by the server.
    """
