"""Reading Prometheus' text format in tests: every sample by name and labels.

prometheus_client's registry is one per process, and the tests run many engines and
gateways in one: a test reads what it checks in series of its own (a market of its
own in the labels) or as the difference between a scrape before and one after.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples}


def value(scraped: Samples, name: str, /, **labels: str) -> float:
    """One sample's value; 0 for a series that does not exist (yet)."""
    return scraped.get((name, frozenset(labels.items())), 0.0)


def has(scraped: Samples, name: str, /, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in scraped
