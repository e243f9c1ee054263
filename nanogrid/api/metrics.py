"""The API's Prometheus instrumentation: every request counted and timed by its URL rule, and
GET /metrics, which shows every gunicorn worker's figures (nanogrid.metrics: multiprocess mode)."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from nanogrid import metrics
from nanogrid.config import Settings

UNMATCHED_ROUTE = "<unmatched>"


def register(app: Flask, settings: Settings) -> None:
    """Count every request by its URL rule (not its path: ids would explode the label set) and
    serve /metrics as a plain app route, outside the API blueprint and whatever guards it."""
    m = metrics.api_metrics()

    @app.before_request
    def _start_timer():
        g.nanogrid_request_started = time.perf_counter()

    @app.after_request
    def _count(response):
        started = g.pop("nanogrid_request_started", None)
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        m.requests.labels(method=request.method, route=route, status=str(response.status_code)).inc()
        if started is not None:
            m.latency.labels(method=request.method, route=route).observe(time.perf_counter() - started)
        return response

    def metrics_view():
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(metrics.registry(settings)), headers={"Content-Type": content_type})

    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics_view, methods=["GET"])
