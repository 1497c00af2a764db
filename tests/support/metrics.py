"""Scraping a ``/metrics`` endpoint over HTTP and reading its samples, as Prometheus does."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]


class Samples:
    """Every sample of one scrape, by sample name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float | None:
        """The value of one sample (None: not served)."""
        return self.values.get((name, tuple(sorted(labels.items()))))

    def value(self, name: str, **labels: str) -> float:
        """The value of one sample, which must be served."""
        found = self.get(name, **labels)
        assert found is not None, f"{name}{labels} not served"
        return found

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """The samples of ``name`` with ``labels``, by the value of ``label``."""
        wanted = set(labels.items())
        return {
            dict(key)[label]: value
            for (sample, key), value in self.values.items()
            if sample == name and wanted <= set(key) and label in dict(key)
        }


async def scrape(url: str) -> Samples:
    """GET ``url`` (a ``/metrics`` endpoint) and parse it; fails unless it answers 200."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.get(url) as response,
    ):
        text = await response.text()
        assert response.status == 200, (response.status, text[:500])
        return Samples(text)
