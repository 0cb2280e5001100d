"""Scraping a real service's Prometheus endpoint (--metrics-listen 127.0.0.1:0) over HTTP, for
the tests that check metrics against what they did."""

from __future__ import annotations

import asyncio
import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from ackbot.testing import RPC_TIMEOUT, Service

METRICS_ON = re.compile(r"metrics on (\S+):(\d+)")
METRICS = ["--metrics-listen", "127.0.0.1:0"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_address(service: Service) -> str:
    match = METRICS_ON.search(service.log_text())
    assert match is not None, service.describe()
    return f"{match.group(1)}:{match.group(2)}"


def scrape_sync(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=RPC_TIMEOUT) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def scrape(service: Service) -> Samples:
    return await asyncio.to_thread(scrape_sync, metrics_address(service))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
