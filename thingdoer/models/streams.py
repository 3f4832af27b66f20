"""The exec stream's wire format (pure): frames on one HTTP response, numbered as Kubernetes'
remote-command channels.

    frame   = channel (1 byte) + length (4 bytes, big-endian) + payload
    channel   1 stdout, 2 stderr, 3 the final ``Status`` (JSON; the last frame)

The final Status is Kubernetes': ``{"status": "Success"}``, or ``"Failure"`` with reason
``NonZeroExitCode`` and the code in ``details.causes[reason=ExitCode].message``.
"""

from __future__ import annotations

import json
import struct

STDOUT, STDERR, STATUS = 1, 2, 3
MEDIA_TYPE = "application/vnd.thingdoer.exec-frames"
_HEAD = struct.Struct(">BI")


def frame(channel: int, payload: bytes) -> bytes:
    return _HEAD.pack(channel, len(payload)) + payload


def exit_status(code: int) -> bytes:
    """The final frame for a process that exited with ``code``."""
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if code != 0:
        status.update(status="Failure", reason="NonZeroExitCode",
                      message=f"command terminated with non-zero exit code: {code}",
                      details={"causes": [{"reason": "ExitCode", "message": str(code)}]})
    return frame(STATUS, json.dumps(status).encode())


def exit_code(status: dict) -> int:
    """The exit code a final Status names (0 for Success)."""
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause["message"])
    raise ValueError(status.get("message") or "the exec failed without an exit code")


class FrameReader:
    """Bytes in (any chunking), whole frames out."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= _HEAD.size:
            channel, length = _HEAD.unpack_from(self._buffer)
            if len(self._buffer) < _HEAD.size + length:
                break
            frames.append((channel, self._buffer[_HEAD.size:_HEAD.size + length]))
            self._buffer = self._buffer[_HEAD.size + length:]
        return frames
