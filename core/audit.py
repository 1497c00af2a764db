"""The append-only record of operator actions (``admin_audit``, migration 0008).

An action and its row are written in one transaction (the caller's), so that nothing an
operator does happens unrecorded; triggers refuse ``UPDATE``, ``DELETE`` and ``TRUNCATE`` on the
table. The actor is the admin API credential's name, or ``cli:<user>`` for ``intake`` commands.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson


async def record(
    connection: asyncpg.Connection, actor: str, action: str, subject: str, detail: dict[str, Any]
) -> None:
    """Append one action, in the transaction ``connection`` is in."""
    await connection.execute(
        "INSERT INTO admin_audit (actor, action, subject, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        subject,
        orjson.dumps(detail).decode(),
    )
