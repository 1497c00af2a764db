"""HTTP/1.1 by hand on a raw connection: what the edge writes, byte for byte, in order."""

from __future__ import annotations

import asyncio


async def read_response(
    reader: asyncio.StreamReader, timeout_s: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """One response: its status, its headers (names in lower case) and its body."""
    async with asyncio.timeout(timeout_s):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body
