"""The edge application's typed keys (``app[SETTINGS]``, ...), in a module of their own so that
the route modules and the application that adds them import them without a cycle."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from core.keys import Keyring
from core.settings import Settings
from intake.gate import Gate
from intake.httpmetrics import HttpMetrics
from intake.line import Rates
from intake.publisher import BatchPublisher

SETTINGS = web.AppKey("settings", Settings)
KEYRING = web.AppKey("keyring", Keyring)
PUBLISHER = web.AppKey("publisher", BatchPublisher)
GATE = web.AppKey("gate", Gate)
DB = web.AppKey("db", asyncpg.Pool)
STATE = web.AppKey("state", dict[str, bool])
HTTP_METRICS = web.AppKey("http_metrics", HttpMetrics)
LINE_RATES = web.AppKey("line_rates", Rates)
