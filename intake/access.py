"""Who may read or act on a registration: whoever holds its access token."""

from __future__ import annotations

import uuid

from aiohttp import web

from core.keys import Keyring


def authorized_id(request: web.Request, keyring: Keyring) -> uuid.UUID | None:
    """The path's registration id if the request carries its access token as
    ``Authorization: Bearer <token>``; None otherwise. Callers answer None with a 404, the same
    as for an unknown id, so that a guess learns nothing."""
    try:
        registration_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not keyring.check_access_token(registration_id, token.strip()):
        return None
    return registration_id
