"""Admission control of the API: rate limits shared by every API process, and queue backpressure.

Rate limit (NANOGRID_RATE_LIMIT, "1000 per 5 minutes" like the founding document's WAF rule): a
sliding-window counter per key, or per client address for requests without a valid key, kept in
Redis by one Lua script, so every gunicorn worker on every API host counts against the same
number and the clock is Redis's. The counter of the previous window is weighed by how much of it
the sliding window still covers, so a burst at a window boundary cannot double the limit (it
assumes the previous window's requests were spread evenly: a client that times a burst just before
a window ends gets close to twice the limit in one period-long span, see the table). Refused
requests are not counted. When Redis cannot be reached the request is let through (logged): the
routes that need Redis answer 503 on their own, and the others keep working.

Why ours and not flask-limiter (measured against flask-limiter 4.1.1 with limits 5.8.0 on Redis
storage; one redis-server 7.0, a 2-core machine, each variant in its own process, alternating, 7
rounds, medians; the limiter step timed 5000 times inside a request, GET /limits 2500 times through
the Flask test client):

| | ours | flask-limiter sliding-window-counter | flask-limiter moving-window |
|---|---|---|---|
| limiter step, allowed, p50 / p99 | 140 / 292 us | 291 / 585 us | 339 / 782 us |
| limiter step, refused, p50 / p99 | 139 / 259 us | 456 / 1532 us | 471 / 1803 us |
| GET /limits req/s allowed (refused); no limit: ~2800 | 1508 (1813) | 1051 (913) | 1091 (866) |
| scripts per request (commands run), allowed / refused | 1 (4) / 1 (4) | 1 (7) / 2 (9) | 1 (4) / 2 (3) |
| Redis memory per identity after 1000 requests | 104 B | 104 B | 20232 B |
| most allowed in one 2 s span, 20 per 2 s, timed burst | 37 | 38 | 20 |
| Redis down: log records for 20 requests | 1 warning | 20 tracebacks | 20 tracebacks |

flask-limiter does what we need once wired around it (its hook between our key check and our
401, request_filter for /health and /metrics, a request_identifier so unrouted 404s are counted,
swallow_errors to fail open, an on_breach callback and an error handler for our JSON 429 with
Retry-After): the rate-limit tests pass with both strategies, refused requests are not counted and
a client waiting Retry-After was never refused again (0 of 17 and 0 of 6 retries). But its limiter
step costs about twice ours when the request is allowed and over three times when it is refused
(the path an abusive client keeps us on): Python of its own per request, and two Redis scripts per
refusal, because hit() answers only yes or no and Retry-After needs a second window read. Its
sliding-window counter is the same approximation as ours (a burst timed just before a window ends,
then a steady stream, gets 37-38 requests into one 2 s span at 20 per 2 s); its moving window is
exact (20) but keeps one timestamp per counted request (about 20 KB per client at the default
limit) on each API host's clock, not Redis's; it logs a traceback per request while Redis is down.
The `limits` library alone (our hook, its sliding-window counter) costs the same as ours when
allowed (133 us) but also two scripts when refused (304 us). So the counter stays this one Lua
script.

Backpressure (NANOGRID_MAX_QUEUE_DEPTH): the broker's waiting messages, read at most every
QUEUE_DEPTH_CACHE_S per process; a run request over the maximum gets 503 before anything is
written.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import redis

from nanogrid.config import RateLimit, Settings
from nanogrid.transport.depth import queue_depth

log = logging.getLogger(__name__)
KEY_PREFIX = "nanogrid:ratelimit:"
QUEUE_DEPTH_CACHE_S = 2.0
BACKPRESSURE_RETRY_AFTER_S = 5
WARN_EVERY_S = 60.0

# KEYS[1]: the counter hash (w: window number, c: count in it, p: count in the one before).
# ARGV: limit, period in ms. Returns {allowed (0/1), retry-after ms when refused | remaining}.
SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local window = math.floor(now / period)
local elapsed = now - window * period
local stored = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w = tonumber(stored[1])
local c = tonumber(stored[2]) or 0
local p = tonumber(stored[3]) or 0
if w == nil or w < window - 1 then
  c = 0
  p = 0
elseif w == window - 1 then
  p = c
  c = 0
end
local weighted = p * (period - elapsed) / period + c
local allowed = weighted + 1 <= limit
if allowed then
  c = c + 1
end
redis.call('HSET', KEYS[1], 'w', window, 'c', c, 'p', p)
redis.call('PEXPIRE', KEYS[1], 2 * period)
if allowed then
  return {1, math.floor(limit - weighted - 1)}
end
local wait
if c + 1 > limit then
  wait = (period - elapsed) + math.ceil(period * (1 - (limit - 1) / c))
else
  wait = (period - elapsed) - math.floor((limit - c - 1) * period / p)
end
return {0, math.max(wait, 1)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int = 0


class RateLimiter:
    def __init__(self, client: redis.Redis, limit: RateLimit):
        self.client = client
        self.limit = limit
        self.script = client.register_script(SLIDING_WINDOW)
        self._warned = -math.inf  # the first failure warns, however young the monotonic clock

    def hit(self, identity: str) -> Decision:
        """Count one request of identity ("key:<id>" or "addr:<address>") unless over the limit."""
        if not self.limit.enabled:
            return Decision(True)
        try:
            allowed, value = self.script(keys=[KEY_PREFIX + identity],
                                         args=[self.limit.count, self.limit.period_s * 1000])
        except redis.RedisError as exc:
            now = time.monotonic()
            if now - self._warned > WARN_EVERY_S:
                self._warned = now
                log.warning("rate limit not enforced: redis is unavailable (%s)", exc)
            return Decision(True)
        if allowed:
            return Decision(True)
        return Decision(False, max(1, math.ceil(int(value) / 1000)))


class QueueDepth:
    """The broker's waiting run messages, measured at most every QUEUE_DEPTH_CACHE_S seconds."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._value: int | None = None
        self._until = 0.0

    def overloaded(self) -> bool:
        maximum = self.settings.max_queue_depth
        if not maximum:
            return False
        depth = self.depth()
        return depth is not None and depth >= maximum

    def depth(self) -> int | None:
        now = time.monotonic()
        with self._lock:
            if now < self._until:
                return self._value
        try:
            value = self._measure()
        except Exception as exc:  # noqa: BLE001 - an unreadable depth must not refuse runs: the publish answers
            log.warning("queue depth unavailable for backpressure: %s", exc)
            value = None
        with self._lock:
            self._value, self._until = value, now + QUEUE_DEPTH_CACHE_S
        return value

    def _measure(self) -> int:
        return queue_depth(self.settings, in_flight=False).visible
