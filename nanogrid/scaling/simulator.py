"""A simulator of the worker Auto Scaling group under the two scaling policies.

`nanogrid scaling simulate --trace FILE --policy step|target|both` replays a job-arrival trace
against a model of the worker Auto Scaling group under each policy and prints drain time, peak
backlog, p95 queue wait and instance-minutes. The figures (group size, alarm thresholds and
periods, cooldown, target) are FLEET below; tests/fleet/test_scaling.py checks that they equal
the defaults in deploy/terraform.

The model, in one-second steps:
- a worker runs `concurrency` jobs at once; run times are exponential with mean `mean_run_s`
  (the same seeded sequence of jobs for every policy);
- a launched worker is InService for the group after `launch_s` and takes jobs after `boot_s`
  (boot, ansible-pull, runtime image build);
- every alarm period CloudWatch gets the maximum of the visible messages in that period
  (step alarms) and the publisher's backlog per in-service worker (target tracking);
- step: the founding document's two alarms. While an alarm is in ALARM, CloudWatch invokes its
  Auto Scaling action every period; the simple policy adds or removes one worker unless a
  scaling activity is in progress or the cooldown (started when the activity completed) runs;
- target: the alarms target tracking creates for a one-minute metric: 3 periods above the
  target scale out, 15 periods below 90 % of it scale in, each to ceil(backlog / target)
  workers; no cooldown, and launching workers count towards the capacity already asked for;
- scale-in picks the newest worker, which stops taking jobs and terminates when its running
  jobs have finished (the termination lifecycle hook and the drain script); the scaling
  activity completes then.
"""

from __future__ import annotations

import csv
import math
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

STEP = "step"
TARGET = "target"
POLICIES = (STEP, TARGET)


@dataclass(frozen=True)
class FleetFigures:
    """The worker fleet's scaling figures: the founding document's, as in deploy/terraform."""

    min_size: int = 2
    desired_capacity: int = 2
    max_size: int = 5
    scale_out_threshold: int = 10  # visible messages >= 10 -> +1
    scale_in_threshold: int = 0  # visible messages <= 0 ...
    alarm_period_s: int = 60
    scale_out_evaluation_periods: int = 1
    scale_in_evaluation_periods: int = 3  # ... for 3 minutes -> -1
    cooldown_s: int = 300
    backlog_target_per_instance: float = 8.0  # 120 s acceptable wait / 30 s run x 2 slots
    instance_warmup_s: int = 300


FLEET = FleetFigures()

# Target tracking's own alarms for a metric published once a minute (AWS documents 3 data
# points for scale-out and 15 for scale-in, and a scale-in threshold below the target).
TARGET_SCALE_OUT_PERIODS = 3
TARGET_SCALE_IN_PERIODS = 15
TARGET_SCALE_IN_FACTOR = 0.9


@dataclass(frozen=True)
class Model:
    """What a worker can do and how fast the group reacts; defaults match the platform's."""

    concurrency: int = 2  # NANOGRID_WORKER_CONCURRENCY's default
    mean_run_s: float = 30.0
    launch_s: int = 60  # launch -> InService in the group
    boot_s: int = FLEET.instance_warmup_s  # launch -> taking jobs
    tail_s: int = 3600  # simulated time after the trace before the window closes
    seed: int = 1


# --- Traces ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """Job arrivals: rows of (t_s, jobs, over_s): `jobs` arrive evenly over [t_s, t_s + over_s)."""

    name: str
    duration_s: int
    rows: tuple[tuple[int, int, int], ...]

    def arrivals(self) -> list[int]:
        """Arrival second of every job, in order."""
        times: list[int] = []
        for t, jobs, over in self.rows:
            for i in range(jobs):
                times.append(t + (i * over) // jobs if over else t)
        times.sort()
        return times

    @property
    def jobs(self) -> int:
        return sum(r[1] for r in self.rows)


def load_trace(path: str | Path) -> Trace:
    """Read a trace CSV: `t_s,jobs[,over_s]` rows, `#` comments, `# duration_s: N` optional."""
    path = Path(path)
    rows: list[tuple[int, int, int]] = []
    duration = 0
    with path.open(newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            if text.startswith("#"):
                key, _, value = text.lstrip("#").partition(":")
                if key.strip() == "duration_s":
                    duration = int(value)
                continue
            cells = next(csv.reader([text]))
            if cells[0].strip() == "t_s":
                continue
            try:
                t, jobs = int(cells[0]), int(cells[1])
                over = int(cells[2]) if len(cells) > 2 and cells[2].strip() else 0
            except (ValueError, IndexError):
                raise ValueError(f"{path}:{lineno}: expected t_s,jobs[,over_s], got {text!r}") from None
            if t < 0 or jobs < 0 or over < 0:
                raise ValueError(f"{path}:{lineno}: negative value in {text!r}")
            rows.append((t, jobs, over))
    if not rows:
        raise ValueError(f"{path}: no arrivals")
    end = max(t + max(over, 1) for t, _, over in rows)
    return Trace(path.stem, max(duration, end), tuple(rows))


# --- Simulation --------------------------------------------------------------------------------


@dataclass
class _Worker:
    wid: int
    launched_at: int
    in_service_at: int
    ready_at: int
    running: list[float] = field(default_factory=list)  # end times
    draining: bool = False


@dataclass(frozen=True)
class Result:
    trace: str
    policy: str
    jobs: int
    drain_s: float  # last arrival -> last job finished
    peak_backlog: int  # most jobs waiting in the queue at once
    p95_wait_s: float  # queue wait (arrival -> start), 95th percentile
    instance_minutes: float  # launched-to-terminated worker time within the window
    max_workers: int
    window_s: int

    def row(self) -> list[str]:
        return [
            self.trace,
            self.policy,
            str(self.jobs),
            _minutes(self.drain_s),
            str(self.peak_backlog),
            f"{self.p95_wait_s:.0f} s",
            f"{self.instance_minutes:.0f}",
            str(self.max_workers),
        ]


HEADER = ["trace", "policy", "jobs", "drain time", "peak backlog", "p95 queue wait", "instance-minutes", "max workers"]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return float(ordered[rank])


def simulate(trace: Trace, policy: str, model: Model = Model(), fleet: FleetFigures = FLEET) -> Result:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    arrivals = trace.arrivals()
    rng = random.Random(model.seed)
    durations = [rng.expovariate(1.0 / model.mean_run_s) for _ in arrivals]

    queue: deque[tuple[int, int]] = deque()  # (arrival second, job index)
    waits: list[float] = []
    workers: list[_Worker] = []
    next_id = 0

    def launch(now: int, ready_now: bool = False) -> None:
        nonlocal next_id
        start = now - model.boot_s if ready_now else now
        workers.append(_Worker(next_id, start, start + model.launch_s, start + model.boot_s))
        next_id += 1

    for _ in range(fleet.desired_capacity):
        launch(0, ready_now=True)

    desired = fleet.desired_capacity
    # Simple scaling: blocked while an activity runs and for the cooldown after it completes.
    activity: tuple[str, int] | None = None  # ("out", worker id) or ("in", worker id)
    cooldown_until = -1
    period_max_visible = 0
    peak_backlog = 0
    visible_points: list[int] = []
    backlog_points: list[float] = []
    instance_seconds = 0
    max_workers = len(workers)
    done = 0
    last_finish = 0.0
    next_arrival = 0
    window_end = trace.duration_s + model.tail_s
    hard_end = trace.duration_s + 48 * 3600

    t = 0
    while True:
        # Arrivals this second.
        while next_arrival < len(arrivals) and arrivals[next_arrival] <= t:
            queue.append((arrivals[next_arrival], next_arrival))
            next_arrival += 1

        # Finished runs; drained workers terminate (their lifecycle action completes).
        for w in list(workers):
            if w.running:
                still = [end for end in w.running if end > t]
                finished = len(w.running) - len(still)
                if finished:
                    done += finished
                    last_finish = max([last_finish] + [end for end in w.running if end <= t])
                w.running = still
            if w.draining and not w.running:
                workers.remove(w)
                if activity == ("in", w.wid):
                    activity = None
                    cooldown_until = t + fleet.cooldown_s

        # A scale-out activity completes when its instance is InService.
        if activity is not None and activity[0] == "out":
            w = next((w for w in workers if w.wid == activity[1]), None)
            if w is None or t >= w.in_service_at:
                activity = None
                cooldown_until = t + fleet.cooldown_s

        # Ready workers take jobs from the queue (prefetch 1: one message per free slot).
        for w in workers:
            if w.draining or t < w.ready_at:
                continue
            while queue and len(w.running) < model.concurrency:
                arrived, idx = queue.popleft()
                waits.append(t - arrived)
                w.running.append(t + durations[idx])

        period_max_visible = max(period_max_visible, len(queue))
        peak_backlog = max(peak_backlog, len(queue))
        instance_seconds += len(workers) if t < window_end else 0
        max_workers = max(max_workers, len(workers))

        # Alarm evaluation at the end of every period.
        if (t + 1) % fleet.alarm_period_s == 0:
            visible_points.append(period_max_visible)
            period_max_visible = 0
            in_service = sum(1 for w in workers if not w.draining and t >= w.in_service_at)
            backlog_points.append(len(queue) / max(in_service, 1))
            if policy == STEP:
                high = _breaching(visible_points, fleet.scale_out_evaluation_periods,
                                  lambda v: v >= fleet.scale_out_threshold)
                low = _breaching(visible_points, fleet.scale_in_evaluation_periods,
                                 lambda v: v <= fleet.scale_in_threshold)
                idle = activity is None and t >= cooldown_until
                if high and idle and desired < fleet.max_size:
                    desired += 1
                    launch(t + 1)
                    activity = ("out", workers[-1].wid)
                elif low and idle and desired > fleet.min_size:
                    desired -= 1
                    victim = _newest(workers)
                    victim.draining = True
                    activity = ("in", victim.wid)
            else:
                target = fleet.backlog_target_per_instance
                wanted = min(fleet.max_size, max(fleet.min_size, math.ceil(len(queue) / target)))
                if _breaching(backlog_points, TARGET_SCALE_OUT_PERIODS, lambda v: v > target) and wanted > desired:
                    for _ in range(wanted - desired):
                        launch(t + 1)
                    desired = wanted
                elif (_breaching(backlog_points, TARGET_SCALE_IN_PERIODS, lambda v: v < TARGET_SCALE_IN_FACTOR * target)
                      and wanted < desired):
                    for _ in range(desired - wanted):
                        _newest(workers).draining = True
                    desired = wanted

        t += 1
        settled = (next_arrival == len(arrivals) and done == len(arrivals) and activity is None
                   and len(workers) == desired == fleet.min_size)
        if (settled and t >= window_end) or t >= hard_end:
            break

    last_arrival = arrivals[-1] if arrivals else 0
    return Result(
        trace=trace.name,
        policy=policy,
        jobs=len(arrivals),
        drain_s=max(0.0, last_finish - last_arrival),
        peak_backlog=peak_backlog,
        p95_wait_s=_percentile(waits, 0.95),
        instance_minutes=instance_seconds / 60,
        max_workers=max_workers,
        window_s=window_end,
    )


def _breaching(points: list, periods: int, test) -> bool:
    return len(points) >= periods and all(test(v) for v in points[-periods:])


def _newest(workers: list[_Worker]) -> _Worker:
    candidates = [w for w in workers if not w.draining]
    return max(candidates, key=lambda w: (w.launched_at, w.wid))


def table(results: Iterable[Result]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in results:
        lines.append("| " + " | ".join(r.row()) + " |")
    return "\n".join(lines)
