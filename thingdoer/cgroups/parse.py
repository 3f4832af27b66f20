"""The formats of cgroupfs files, parsed (pure). Every parser takes the file's text and the
path it came from, and raises ``Invalid`` naming both when the text is not what the kernel
writes.

Formats (as the kernel documents them in cgroup-v2.rst and the v1 controller docs):

- single value:   ``12345\\n``, or ``max`` for no limit (v2); v1 writes a huge number instead
- flat keyed:     ``key value`` per line (``memory.stat``, ``cpu.stat``, ``memory.events``,
                  ``memory.oom_control``)
- nested keyed:   ``key sub=value sub=value`` per line (``io.stat`` keyed by ``MAJ:MIN``,
                  ``cpu.pressure`` keyed by ``some``/``full``)
- pair:           ``cpu.max``: ``$MAX $PERIOD``
- v1 blkio:       ``MAJ:MIN Op value`` per line and a ``Total value`` line
"""

from __future__ import annotations

from pathlib import Path

from ..errors import Invalid

MAX = "max"
V1_UNLIMITED = 2**62  # v1 reports "no limit" as PAGE_COUNTER_MAX pages: anything this large


def _bad(path: Path | str, text: str, what: str) -> Invalid:
    return Invalid(f"{path}: cannot parse {text.strip()[:80]!r}: expected {what}")


def integer(text: str, path: Path | str = "") -> int:
    try:
        return int(text.strip())
    except ValueError as err:
        raise _bad(path, text, "a whole number") from err


def limit(text: str, path: Path | str = "") -> int | None:
    """A limit: None for ``max`` (v2) or a v1 value meaning no limit."""
    if text.strip() == MAX:
        return None
    value = integer(text, path)
    return None if value >= V1_UNLIMITED else value


def flat_keyed(text: str, path: Path | str = "") -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise _bad(path, line, "'key value' lines")
        out[parts[0]] = integer(parts[1], path)
    return out


def nested_keyed(text: str, path: Path | str = "") -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        fields = {}
        for part in parts[1:]:
            key, sep, value = part.partition("=")
            if not sep:
                raise _bad(path, line, "'key sub=value ...' lines")
            fields[key] = value
        out[parts[0]] = fields
    return out


def cpu_max(text: str, path: Path | str = "") -> tuple[int | None, int]:
    """``cpu.max`` → (quota µs or None for ``max``, period µs)."""
    parts = text.split()
    if len(parts) != 2:
        raise _bad(path, text, "'$MAX $PERIOD'")
    return limit(parts[0], path), integer(parts[1], path)


def pressure(text: str, path: Path | str = "") -> dict[str, dict[str, float]]:
    """``*.pressure`` → {"some": {"avg10": .., "avg60": .., "avg300": .., "total": ..}, "full": ..}
    (``total`` is in µs)."""
    try:
        return {kind: {k: float(v) for k, v in fields.items()}
                for kind, fields in nested_keyed(text, path).items()}
    except ValueError as err:
        raise _bad(path, text, "'some avg10=N avg60=N avg300=N total=N'") from err


def io_stat(text: str, path: Path | str = "") -> tuple[int, int]:
    """v2 ``io.stat`` → (bytes read, bytes written) summed over devices."""
    read = written = 0
    for fields in nested_keyed(text, path).values():
        read += integer(fields.get("rbytes", "0"), path)
        written += integer(fields.get("wbytes", "0"), path)
    return read, written


def blkio_bytes(text: str, path: Path | str = "") -> tuple[int, int]:
    """v1 ``blkio.throttle.io_service_bytes_recursive`` → (bytes read, bytes written)."""
    read = written = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("Read", "Write"):
            if parts[1] == "Read":
                read += integer(parts[2], path)
            else:
                written += integer(parts[2], path)
        elif parts and parts[0] != "Total" and len(parts) != 3:
            raise _bad(path, line, "'MAJ:MIN Op value' lines")
    return read, written
