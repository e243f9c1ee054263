"""nanogrid.scaling: the simulator's figures equal Terraform's, its runs are sane, the publisher works."""

from __future__ import annotations

import collections
import dataclasses

import pytest

from fleetlib import TRACES, root_default
from nanogrid import scaling
from nanogrid.scaling import publisher, simulator

TRACE_FILES = [TRACES / "steady.csv", TRACES / "burst.csv", TRACES / "daily.csv"]


def test_fleet_figures_equal_the_terraform_defaults():
    fleet = simulator.FLEET
    expected = {
        "min_size": "worker_min_size",
        "desired_capacity": "worker_desired_capacity",
        "max_size": "worker_max_size",
        "scale_out_threshold": "scale_out_threshold",
        "scale_in_threshold": "scale_in_threshold",
        "alarm_period_s": "alarm_period_seconds",
        "scale_out_evaluation_periods": "scale_out_evaluation_periods",
        "scale_in_evaluation_periods": "scale_in_evaluation_periods",
        "cooldown_s": "scaling_cooldown_seconds",
        "backlog_target_per_instance": "backlog_target_per_instance",
        "instance_warmup_s": "instance_warmup_seconds",
    }
    assert set(expected) == {f.name for f in dataclasses.fields(fleet)}
    for attribute, variable in expected.items():
        assert getattr(fleet, attribute) == root_default(variable), attribute
    # The founding document's figures themselves.
    assert (fleet.min_size, fleet.desired_capacity, fleet.max_size) == (2, 2, 5)
    assert (fleet.scale_out_threshold, fleet.cooldown_s) == (10, 300)
    assert fleet.scale_in_evaluation_periods * fleet.alarm_period_s == 180


def test_the_publishers_metric_is_the_one_terraform_scales_on():
    from nanogrid.config import Settings

    assert Settings.metric_namespace == root_default("metric_namespace")
    assert Settings.backlog_metric == root_default("backlog_metric_name")


def test_model_defaults_match_the_platform():
    from nanogrid.config import Settings

    assert simulator.Model().concurrency == Settings().worker_concurrency
    assert simulator.Model().boot_s == simulator.FLEET.instance_warmup_s


def test_traces_load():
    steady, burst, daily = (simulator.load_trace(p) for p in TRACE_FILES)
    assert steady.jobs == 720 and steady.duration_s == 7200
    assert burst.jobs == 1000 and burst.rows == ((60, 1000, 0),)
    assert daily.duration_s == 86400 and 5000 < daily.jobs < 10000
    assert all(0 <= t < 86400 for t in daily.arrivals())
    for trace in (steady, burst, daily):
        assert len(trace.arrivals()) == trace.jobs
        assert (TRACES / f"{trace.name}.csv").stat().st_size < 20_000


def test_bad_trace_rows_are_rejected(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("t_s,jobs\n0,x\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        simulator.load_trace(bad)
    assert scaling.main(["simulate", "--trace", str(bad)]) == 2
    empty = tmp_path / "empty.csv"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no arrivals"):
        simulator.load_trace(empty)


@dataclasses.dataclass
class Run:
    """A simulation and every job in it, as the simulator handed them out: the queue's (arrival
    second, job index) and, in the same order, the end time the worker that took it set."""

    result: simulator.Result
    taken: list[tuple[int, int]]
    ends: list[float]


def simulate_recorded(trace: simulator.Trace, policy: str) -> Run:
    """simulator.simulate, watching its queue and its workers' running jobs."""
    taken: list[tuple[int, int]] = []
    ends: list[float] = []

    class Queue(collections.deque):
        def popleft(self):
            item = super().popleft()
            taken.append(item)
            return item

    class Ends(list):
        def append(self, end: float) -> None:
            ends.append(end)
            super().append(end)

    class Worker(simulator._Worker):
        def __setattr__(self, name, value):
            super().__setattr__(name, Ends(value) if name == "running" else value)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(simulator, "deque", Queue)
        patch.setattr(simulator, "_Worker", Worker)
        result = simulator.simulate(trace, policy)
    return Run(result, taken, ends)


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, str], Run]:
    out = {}
    for path in TRACE_FILES:
        trace = simulator.load_trace(path)
        for policy in simulator.POLICIES:
            out[trace.name, policy] = simulate_recorded(trace, policy)
    return out


@pytest.fixture(scope="module")
def results(runs) -> dict[tuple[str, str], simulator.Result]:
    return {key: run.result for key, run in runs.items()}


def test_every_job_runs_and_the_group_stays_within_its_bounds(runs):
    for (trace, policy), run in runs.items():
        arrivals = simulator.load_trace(TRACES / f"{trace}.csv").arrivals()
        # Each arrival was taken from the queue once, after it arrived...
        assert sorted(index for _, index in run.taken) == list(range(len(arrivals))), (trace, policy)
        assert all(arrived == arrivals[index] for arrived, index in run.taken), (trace, policy)
        assert len(run.ends) == len(run.taken) and all(end > arrived for (arrived, _), end in zip(run.taken, run.ends))
        # ...and ended within the simulation: it counted the latest end of them all as finished (its
        # last finish), so its clock had passed every job's end.
        last_finish = run.result.drain_s + arrivals[-1]
        assert max(run.ends) == pytest.approx(last_finish), (trace, policy)
        result = run.result
        assert result.jobs == len(arrivals)
        assert simulator.FLEET.min_size <= result.max_workers <= simulator.FLEET.max_size, (trace, policy)
        minimum = simulator.FLEET.min_size * result.window_s / 60
        assert result.instance_minutes >= minimum - 1, (trace, policy)


def test_steady_load_below_capacity_does_not_scale(results):
    for policy in simulator.POLICIES:
        result = results["steady", policy]
        assert result.max_workers == simulator.FLEET.min_size
        assert result.peak_backlog < simulator.FLEET.scale_out_threshold
        assert result.instance_minutes == pytest.approx(simulator.FLEET.min_size * result.window_s / 60)


def test_a_burst_scales_out_to_the_maximum_and_drains(results):
    for policy in simulator.POLICIES:
        result = results["burst", policy]
        assert result.max_workers == simulator.FLEET.max_size
        assert result.peak_backlog >= 990
        # 1,000 runs of 30 s on 10 slots take 50 min at the very least; on the 4 slots of the
        # minimum group they would take 125 min.
        assert 50 * 60 < result.drain_s < 125 * 60, (policy, result.drain_s)


def test_step_policy_adds_one_worker_per_cooldown():
    """A burst under the step policy: +1 at a time, each after the previous one's cooldown."""
    trace = simulator.Trace("one-burst", 3600, ((0, 400, 0),))
    fast = simulator.simulate(trace, simulator.STEP, simulator.Model(boot_s=60, launch_s=60))
    slow = simulator.simulate(trace, simulator.STEP, simulator.Model(boot_s=60, launch_s=60),
                            dataclasses.replace(simulator.FLEET, cooldown_s=1800))
    assert fast.max_workers == simulator.FLEET.max_size
    assert slow.max_workers < fast.max_workers
    assert slow.drain_s > fast.drain_s


def test_simulation_is_deterministic():
    trace = simulator.load_trace(TRACES / "burst.csv")
    assert simulator.simulate(trace, simulator.TARGET) == simulator.simulate(trace, simulator.TARGET)


def test_simulate_command_prints_the_table(capsys):
    args = ["simulate", "--policy", "both"]
    for path in TRACE_FILES:
        args += ["--trace", str(path)]
    assert scaling.main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "policy" not in line]
    assert len(rows) == 6
    assert {row.split("|")[2].strip() for row in rows} == {"step", "target"}
    assert "drain time" in out and "p95 queue wait" in out and "instance-minutes" in out


def test_simulate_rejects_bad_parameters(capsys):
    assert scaling.main(["simulate", "--trace", str(TRACE_FILES[0]), "--concurrency", "0"]) == 2


# --- Publisher against moto ---------------------------------------------------------------------


@pytest.fixture
def fake_aws(monkeypatch):
    import moto
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "ap-northeast-2"}.items():
        monkeypatch.setenv(key, value)
    from nanogrid import aws

    aws._clients.clear()
    with moto.mock_aws():
        yield
    aws._clients.clear()


def test_publisher_sends_backlog_per_in_service_worker(fake_aws):
    import boto3

    from nanogrid.config import Settings

    region = "ap-northeast-2"
    sqs = boto3.client("sqs", region_name=region)
    url = sqs.create_queue(QueueName="nanogrid-task-queue")["QueueUrl"]
    for i in range(9):
        sqs.send_message(QueueUrl=url, MessageBody=f"job-{i}")
    ec2 = boto3.client("ec2", region_name=region)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    template = ec2.create_launch_template(
        LaunchTemplateName="nanogrid-worker", LaunchTemplateData={"ImageId": image, "InstanceType": "t3.small"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    autoscaling = boto3.client("autoscaling", region_name=region)
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="nanogrid-workers", MinSize=2, MaxSize=5, DesiredCapacity=3,
        LaunchTemplate={"LaunchTemplateId": template}, AvailabilityZones=[f"{region}a"],
    )
    settings = Settings(sqs_queue_url=url, aws_region=region, broker_url="sqs://", worker_asg="nanogrid-workers")
    sample = publisher.publish_once(settings)
    assert sample == {"visible": 9, "in_service": 3, "backlog_per_instance": 3.0}
    cloudwatch = boto3.client("cloudwatch", region_name=region)
    metrics = cloudwatch.list_metrics(Namespace=settings.metric_namespace)["Metrics"]
    names = {m["MetricName"] for m in metrics}
    assert names == {settings.backlog_metric, "QueueBacklog", "InServiceWorkers"}
    for metric in metrics:
        assert metric["Dimensions"] == [{"Name": "QueueName", "Value": "nanogrid-task-queue"}]


def test_publisher_needs_the_queue_and_the_group_name(capsys):
    from nanogrid.config import Settings

    assert publisher.run(Settings(worker_asg="g"), once=True) == 2
    assert "SQS_QUEUE_URL" in capsys.readouterr().err
    queue = {"SQS_QUEUE_URL": "http://sqs.local/123/nanogrid-task-queue"}
    assert publisher.run(Settings.from_env(queue), once=True) == 2
    assert capsys.readouterr().err.strip() == ("error: scaling publish needs NANOGRID_WORKER_ASG "
                                               "(the worker Auto Scaling group's name)")
    settings = Settings.from_env({**queue, "NANOGRID_WORKER_ASG": "g", "NANOGRID_SCALING_INTERVAL_S": "15"})
    assert (settings.scaling_interval_s, settings.metric_namespace) == (15, "NanoGrid")
