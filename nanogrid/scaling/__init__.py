"""Queue-depth autoscaling of the workers: `nanogrid scaling publish|simulate`.

publisher.py sends the backlog-per-instance metric the target tracking policy follows;
simulator.py replays an arrival trace against both scaling policies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from nanogrid.scaling.simulator import FLEET, POLICIES, Model, load_trace, simulate, table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanogrid scaling", description="Worker autoscaling: metric publisher and policy simulator.")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="publish backlog per instance to CloudWatch every interval")
    pub.add_argument("--once", action="store_true", help="publish one sample and exit")
    sim = sub.add_parser("simulate", help="replay an arrival trace against the scaling policies")
    sim.add_argument("--trace", action="append", required=True, type=Path,
                     help="trace CSV (t_s,jobs[,over_s]); repeat for several traces")
    sim.add_argument("--policy", choices=(*POLICIES, "both"), default="both")
    sim.add_argument("--concurrency", type=int, default=Model.concurrency, help="runs per worker at once")
    sim.add_argument("--mean-run-s", type=float, default=Model.mean_run_s, help="mean run duration")
    sim.add_argument("--boot-s", type=int, default=Model.boot_s, help="launch until a worker takes jobs")
    sim.add_argument("--seed", type=int, default=Model.seed)
    sim.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "publish":
        from nanogrid.config import ConfigError, Settings
        from nanogrid.scaling import publisher

        try:
            settings = Settings.from_env()
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return publisher.run(settings, args.once)
    if args.concurrency < 1 or args.mean_run_s <= 0 or args.boot_s < 0:
        print("need --concurrency >= 1, --mean-run-s > 0 and --boot-s >= 0", file=sys.stderr)
        return 2
    model = Model(concurrency=args.concurrency, mean_run_s=args.mean_run_s, boot_s=args.boot_s,
                  launch_s=min(Model.launch_s, args.boot_s), seed=args.seed)
    policies = POLICIES if args.policy == "both" else (args.policy,)
    results = []
    for path in args.trace:
        try:
            trace = load_trace(path)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        results.extend(simulate(trace, p, model) for p in policies)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    else:
        print(table(results))
        print()
        print(f"model: {model.concurrency} runs per worker, mean run {model.mean_run_s:.0f} s (exponential), "
              f"worker takes jobs {model.boot_s} s after launch; group {FLEET.min_size}-{FLEET.max_size}; "
              f"step: >= {FLEET.scale_out_threshold} visible -> +1, "
              f"0 for {FLEET.scale_in_evaluation_periods * FLEET.alarm_period_s} s -> -1, cooldown {FLEET.cooldown_s} s; "
              f"target: {FLEET.backlog_target_per_instance:g} jobs per worker. "
              f"Instance-minutes counted until {model.tail_s // 60} min after the trace ends.")
    return 0
