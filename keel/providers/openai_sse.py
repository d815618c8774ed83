"""An incremental server-sent-events decoder for OpenAI-style streams.

Bytes are fed as they arrive from the socket, in pieces of any size; each complete event's data
comes out at once. It follows the SSE rules that matter for these streams: lines end in \\n,
\\r\\n or \\r; an event is the `data:` lines before a blank line, joined by \\n; `:` lines are
comments (keep-alives); other fields (`event:`, `id:`, `retry:`) are ignored. No line-length
limit, unlike a readline() loop, so a large tool-call argument in one chunk is fine.
"""

from __future__ import annotations


class SSEDecoder:
    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, piece: bytes) -> list[bytes]:
        """Add bytes from the wire; returns the data of every event they completed."""
        buffer = self._buffer + piece if self._buffer else piece
        hold = b""
        if b"\r" in buffer:
            # Rare (most servers send \n); normalising keeps the common path a plain split.
            if buffer.endswith(b"\r"):
                # It may be the first half of a \r\n split across pieces: decide next time.
                buffer, hold = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._buffer = lines.pop() + hold
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            # comments (":") and other fields are ignored
        return events

    def flush(self) -> list[bytes]:
        """The end of the stream: an event not closed by a blank line still counts."""
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        return events
