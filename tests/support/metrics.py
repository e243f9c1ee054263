"""Reading a Prometheus /metrics page (the API's or a worker's exporter) as the tests check it."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from support.waiting import eventually


def scrape(url: str) -> dict[str, list]:
    """{sample name: [(labels, value), ...]} from a /metrics page, via prometheus_client's parser."""
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples_of(response.text)


def samples_of(text: str) -> dict[str, list]:
    """{sample name: [(labels, value), ...]} of a page in Prometheus' text format."""
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict, name: str, **labels) -> float:
    """The sum of the samples called name whose labels include these (0 when there are none)."""
    return sum(v for sample_labels, v in samples.get(name, []) if labels.items() <= sample_labels.items())


def value(samples: dict, name: str, **labels) -> float:
    """total(), for a sample that must be there."""
    assert any(labels.items() <= sample_labels.items() for sample_labels, _ in samples.get(name, [])), \
        f"no sample {name}{labels}; have: {sorted(samples)}"
    return total(samples, name, **labels)


def scrape_until(url: str, ready, what: str) -> dict[str, list]:
    """The first scrape for which ready(samples) holds."""

    def scraped() -> dict[str, list] | None:
        samples = scrape(url)
        return samples if ready(samples) else None

    return eventually(scraped, 60, what)
