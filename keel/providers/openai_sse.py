"""An incremental server-sent-events decoder for OpenAI-style streams.

Bytes are fed as they arrive from the socket, in pieces of any size; each complete event's data
comes out at once. It follows the SSE rules that matter for these streams: lines end in \\n,
\\r\\n or \\r; an event is the `data:` lines before a blank line, joined by \\n; `:` lines are
comments (keep-alives); other fields (`event:`, `id:`, `retry:`) are ignored.

Decoding is linear in the bytes fed, however the stream is split: pending bytes live in one
`bytearray` that grows in place, the search for line ends resumes where the last one stopped,
and consumed lines are dropped only once they outweigh what is left (amortised, never a copy of
a long partial line per piece). An event larger than `max_event_bytes` (its data lines plus the
line still arriving) raises `EventTooLarge` instead of growing the buffer without bound.
"""

from __future__ import annotations


class EventTooLarge(Exception):
    """One event grew past the decoder's `max_event_bytes`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an event is larger than {limit} bytes")
        self.limit = limit


class SSEDecoder:
    __slots__ = ("_buffer", "_pos", "_scan", "_data", "_data_size", "_max", "_cr")

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._buffer = bytearray()
        self._pos = 0  # start of the line not yet consumed
        self._scan = 0  # where the search for the next line end resumes
        self._data: list[bytes] = []
        self._data_size = 0
        self._max = max_event_bytes
        self._cr = False  # a \r was seen: lines may end in \r or \r\n too

    def feed(self, piece: bytes) -> list[bytes]:
        """Add bytes from the wire; returns the data of every event they completed."""
        buffer = self._buffer
        buffer += piece
        events: list[bytes] = []
        if self._cr or b"\r" in piece:
            self._cr = True
            self._feed_lines(buffer, events)
        else:
            # The common case (\n only): split every complete line at once, each byte once.
            last = buffer.rfind(b"\n", self._scan)
            if last >= 0:
                for line in bytes(buffer[self._pos:last]).split(b"\n"):
                    self._line(line, events)
                self._pos = self._scan = last + 1
            else:
                self._scan = len(buffer)
        pos = self._pos
        if pos and pos >= len(buffer) - pos:
            # Drop consumed lines once they outweigh the rest: each byte is moved O(1) times.
            del buffer[:pos]
            self._scan -= pos
            self._pos = pos = 0
        if self._max is not None and self._data_size + len(buffer) - pos > self._max:
            raise EventTooLarge(self._max)
        return events

    def flush(self) -> list[bytes]:
        """The end of the stream: an event not closed by a blank line still counts."""
        events: list[bytes] = []
        buffer = self._buffer
        if self._pos < len(buffer):
            # A last line without its line end (a lone trailing \r included).
            end = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)
            self._line(bytes(buffer[self._pos:end]), events)
        self._line(b"", events)  # the blank line that closes the event
        self._buffer = bytearray()
        self._pos = self._scan = 0
        return events

    def _feed_lines(self, buffer: bytearray, events: list[bytes]) -> None:
        """Lines ending in \n, \r\n or \r, found one at a time."""
        pos, scan, size = self._pos, self._scan, len(buffer)
        while True:
            nl = buffer.find(b"\n", scan)
            cr = buffer.find(b"\r", scan, nl if nl >= 0 else size)
            if cr >= 0:
                if cr + 1 == size:
                    # It may be the first half of a \r\n split across pieces: decide next time.
                    scan = cr
                    break
                end, scan = cr, cr + (2 if buffer[cr + 1] == 0x0A else 1)
            elif nl >= 0:
                end, scan = nl, nl + 1
            else:
                scan = size
                break
            self._line(bytes(buffer[pos:end]), events)
            pos = scan
        self._pos, self._scan = pos, scan

    def _line(self, line: bytes, events: list[bytes]) -> None:
        data = self._data
        if not line:
            if data:
                events.append(data[0] if len(data) == 1 else b"\n".join(data))
                data.clear()
                self._data_size = 0
        elif line.startswith(b"data:"):
            value = line[6:] if line.startswith(b"data: ") else line[5:]
            data.append(value)
            self._data_size += len(value) + 1
            if self._max is not None and self._data_size > self._max:
                raise EventTooLarge(self._max)
        # comments (":") and other fields are ignored
