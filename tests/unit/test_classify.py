"""FrameReader (the runner's frame stream) and classify (raw facts -> the job's terminal state)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from nanogrid.config import Limit, Settings
from nanogrid.limits import LimitError, Limits
from nanogrid.outcomes import classify
from nanogrid.sandbox import RawRun, RunSpec, instance_id
from nanogrid.sandbox.protocol import (EXIT, FRAME_HEADER, NONCE, REQUEST, RESULT, STDERR, STDOUT, FrameReader,
                                       new_nonce, request_frame)

LIMITS = Limits(timeout_s=5, memory_mb=128, cpus=1.0, pids=64, open_files=64, file_size_mb=10, tmpfs_mb=32,
                output_bytes=1000)


def frame(kind: bytes, payload: bytes) -> bytes:
    return FRAME_HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, value) -> bytes:
    return frame(kind, json.dumps(value).encode())


STREAM = (frame(STDOUT, b"hello ") + frame(STDERR, b"warn\n") + frame(STDOUT, b"world\n")
          + json_frame(RESULT, {"ok": True, "value": [1, 2]})
          + json_frame(EXIT, {"exit_code": 0, "signal": None, "memory_error": False}))


def test_frames_in_one_piece():
    reader = FrameReader(1000)
    reader.feed(STREAM)
    assert (reader.stdout, reader.stderr) == (b"hello world\n", b"warn\n")
    assert reader.result == {"ok": True, "value": [1, 2]}
    assert reader.exit == {"exit_code": 0, "signal": None, "memory_error": False}
    assert not reader.over_cap and not reader.garbled


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_frames_split_anywhere(chunk):
    whole, pieces = FrameReader(1000), FrameReader(1000)
    whole.feed(STREAM)
    for start in range(0, len(STREAM), chunk):
        pieces.feed(STREAM[start:start + chunk])
    assert (pieces.stdout, pieces.stderr, pieces.result, pieces.exit) == (whole.stdout, whole.stderr, whole.result,
                                                                          whole.exit)
    assert not pieces.buffer


def test_output_cap_keeps_the_head_across_both_streams():
    reader = FrameReader(10)
    reader.feed(frame(STDOUT, b"123456") + frame(STDERR, b"abcdef") + frame(STDOUT, b"zzzz"))
    assert reader.over_cap
    assert reader.stdout == b"123456" and reader.stderr == b"abcd"
    assert reader.output_seen == 16
    for _ in range(100):
        reader.feed(frame(STDOUT, b"x" * 1000))
    assert len(reader.stdout) + len(reader.stderr) == 10


def test_output_exactly_at_the_cap_is_not_over():
    reader = FrameReader(10)
    reader.feed(frame(STDOUT, b"0123456789"))
    assert not reader.over_cap and reader.stdout == b"0123456789"


@pytest.mark.parametrize("data", [
    frame(b"z", b"what"),
    FRAME_HEADER.pack(STDOUT, 2 * 1024 * 1024),
    FRAME_HEADER.pack(RESULT, 9 * 1024 * 1024),
    frame(EXIT, b"{not json"),
], ids=["unknown-type", "huge-output-frame", "huge-result", "bad-json"])
def test_garbled_streams_are_flagged_not_buffered(data):
    reader = FrameReader(1000)
    reader.feed(data)
    assert reader.garbled
    assert len(reader.buffer) == 0
    reader.feed(frame(STDOUT, b"after") + json_frame(EXIT, {"exit_code": 0}))  # nothing after it is trusted
    assert reader.stdout == b"" and reader.exit is None and not reader.buffer


@pytest.mark.parametrize("payload, message", [
    (b"{not json", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
], ids=["bad-json", "deeply-nested", "not-an-object"])
def test_a_hostile_result_is_an_invalid_result(payload, message):
    reader = FrameReader(1000)
    reader.feed(frame(RESULT, payload) + json_frame(EXIT, {"exit_code": 0, "signal": None}))
    assert not reader.garbled
    raw = RawRun()
    raw.add_frames(reader)
    outcome = classify(raw, LIMITS)
    assert outcome.error["type"] == "invalid_result" and message in outcome.error["message"]


def test_lone_surrogates_in_a_result_become_replacement_characters():
    reader = FrameReader(1000)
    reader.feed(frame(RESULT, b'{"ok": true, "value": {"half": "a\\udc80b", "pair": "\\ud83d\\ude00"}}'))
    value = reader.result["value"]
    assert value["pair"] == "\U0001f600"
    assert value["half"].startswith("a\ufffd") and value["half"].endswith("b")
    value["half"].encode("utf-8")  # storable


def test_fill_takes_the_runners_accounting():
    reader = FrameReader(1000)
    reader.feed(json_frame(EXIT, {"exit_code": 0, "signal": None, "max_rss_kb": 2048, "cpu_ms": 17}))
    raw = RawRun()
    raw.add_frames(reader)
    assert (raw.peak_memory_bytes, raw.cpu_time_ms) == (2048 * 1024, 17)


def test_fill():
    reader = FrameReader(1000)
    reader.feed(frame(STDOUT, b"out") + json_frame(EXIT, {"exit_code": None, "signal": 9, "memory_error": True}))
    raw = RawRun()
    raw.add_frames(reader)
    assert (raw.stdout, raw.exit_code, raw.exit_signal, raw.memory_error) == (b"out", None, 9, True)
    assert not raw.output_truncated


@pytest.mark.parametrize("oom_kill, expected", [(True, "memory_limit"), (False, "runtime_error"),
                                                 (None, "runtime_error")])
def test_a_sigkill_is_a_memory_limit_only_when_the_cgroup_counted_an_oom_kill(oom_kill, expected):
    """In a warm container the kernel's OOM killer may take the user process and spare the runner,
    which then reports the signal and whether its cgroup's oom_kill counter went up (None: unknown)."""
    reader = FrameReader(1000)
    reader.feed(json_frame(EXIT, {"exit_code": None, "signal": 9, "memory_error": False, "oom_kill": oom_kill,
                                  "clean": True}))
    raw = RawRun()
    raw.add_frames(reader)
    assert raw.oom_killed is (oom_kill is True)
    assert classify(raw, LIMITS).error["type"] == expected


def test_a_request_frame_carries_the_spec_and_the_input_as_text():
    spec = RunSpec("job-1", "fn-1", "/code", "handler", LIMITS, version=3, env={"A": "1"}, input_json='{"x": 1}')
    nonce = new_nonce()
    data = spec.request(nonce, "/run/nanogrid-ai/ai.sock")
    kind, length = FRAME_HEADER.unpack_from(data)
    end = FRAME_HEADER.size + length
    request = json.loads(data[FRAME_HEADER.size:end])
    assert kind == REQUEST and data[end:] == FRAME_HEADER.pack(NONCE, 16) + nonce  # the run's nonce after it
    assert request["input"] == '{"x": 1}' and request["spec"]["handler"] == "handler"
    assert request["spec"]["env"] == {"A": "1"} and request["spec"]["ai"]["socket"] == "/run/nanogrid-ai/ai.sock"
    assert request["spec"]["context"]["function_version"] == 3
    assert 0 < request["spec"]["context"]["deadline"] - time.time() <= LIMITS.timeout_s
    assert request_frame({"handler": None}, "null", nonce)[:1] == REQUEST


@pytest.mark.parametrize("exit_info", [{"exit_code": 0, "clean": True}, {"exit_code": 0, "clean": True, "nonce": "0" * 32},
                                       [1]], ids=["no-nonce", "wrong-nonce", "not-an-object"])
def test_an_exit_frame_without_the_runs_nonce_is_not_the_runners(exit_info):
    """Where a function can write into the runner's stdout (gVisor), it cannot end its run early."""
    nonce = new_nonce()
    reader = FrameReader(1000, nonce=nonce)
    reader.feed(json_frame(EXIT, exit_info) + json_frame(EXIT, {"exit_code": 0, "nonce": nonce.hex()}))
    assert reader.garbled and reader.exit is None
    genuine = FrameReader(1000, nonce=nonce)
    genuine.feed(json_frame(EXIT, {"exit_code": 0, "clean": True, "nonce": nonce.hex()}))
    assert genuine.exit == {"exit_code": 0, "clean": True} and not genuine.garbled


def finished(**changes) -> RawRun:
    """A run whose user code exited with 0 unless changed."""
    return RawRun(**{"exit_code": 0, "runner_exit_code": 0, **changes})


def error_type(raw: RawRun) -> str | None:
    outcome = classify(raw, LIMITS)
    return outcome.error["type"] if outcome.error else None


def test_success_with_and_without_result():
    outcome = classify(finished(result={"ok": True, "value": {"a": 1}}), LIMITS)
    assert (outcome.status, outcome.result, outcome.error, outcome.exit_code) == ("SUCCESS", {"a": 1}, None, 0)
    assert classify(finished(), LIMITS).status == "SUCCESS"
    assert classify(finished(), LIMITS).result is None


@pytest.mark.parametrize("raw, expected", [
    (finished(cancelled=True, timed_out=True, output_truncated=True, oom_killed=True), "cancelled"),
    (finished(timed_out=True, output_truncated=True, oom_killed=True), "timeout"),
    (finished(output_truncated=True, oom_killed=True), "output_limit"),
    (finished(oom_killed=True, exit_code=None, exit_signal=9), "memory_limit"),
    (finished(memory_error=True, exit_code=1), "memory_limit"),
    (finished(exit_code=None, exit_signal=signal.SIGXFSZ), "file_limit"),
    (RawRun(runner_exit_code=1, runner_stderr=b"python3: not found"), "sandbox_error"),
    (finished(exit_code=None, exit_signal=signal.SIGSEGV), "runtime_error"),
    (finished(exit_code=2), "runtime_error"),
    (finished(result={"ok": False, "error": "invalid_result", "message": "not JSON"}), "invalid_result"),
    (finished(result={"no": "ok key"}), "invalid_result"),
    (finished(result={"ok": False, "error": "timeout", "message": "a lie"}), "invalid_result"),
    (finished(garbled=True, exit_code=None), "runtime_error"),
    (RawRun(runner_exit_code=137), "runtime_error"),
], ids=["cancelled", "timeout", "output", "oom", "memory-error", "file", "sandbox", "signal", "exit-code",
        "invalid-result", "malformed-result", "result-claims-another-error", "garbled", "runner-killed"])
def test_error_types_and_their_precedence(raw, expected):
    assert error_type(raw) == expected


def test_messages_name_the_limit_and_the_detail():
    assert "5 s" in classify(finished(timed_out=True), LIMITS).error["message"]
    assert "128 MB" in classify(finished(oom_killed=True), LIMITS).error["message"]
    assert "10 MB" in classify(finished(exit_code=None, exit_signal=signal.SIGXFSZ), LIMITS).error["message"]
    assert "SIGSEGV" in classify(finished(exit_code=None, exit_signal=signal.SIGSEGV), LIMITS).error["message"]
    assert "python3: not found" in classify(RawRun(runner_stderr=b"python3: not found"), LIMITS).error["message"]
    truncated = classify(finished(output_truncated=True), LIMITS)
    assert "1000 bytes" in truncated.error["message"] and truncated.error["type"] == "output_limit"


def test_failed_outcome_keeps_the_exit_code():
    assert classify(finished(exit_code=3), LIMITS).exit_code == 3


def test_signals_are_part_of_the_error():
    assert classify(finished(exit_code=None, exit_signal=signal.SIGSEGV), LIMITS).error["signal"] == 11
    killed = classify(RawRun(runner_exit_code=137), LIMITS).error
    assert killed["signal"] == 9 and "runner" in killed["message"]
    assert "signal" not in classify(finished(exit_code=2), LIMITS).error


SETTINGS = Settings()


def test_limits_check_normalises_and_refuses():
    assert Limits.check(SETTINGS, None) == {}
    assert Limits.check(SETTINGS, {"timeout_s": "2.5", "memory_mb": 64.0, "pids": None}) == {"timeout_s": 2.5,
                                                                                             "memory_mb": 64}
    for bad, message in [
        ([1], "must be an object"), ({"gpus": 1}, "unknown limit"), ({"memory_mb": "lots"}, "must be a number"),
        ({"pids": 1.5}, "whole number"), ({"pids": True}, "must be a number"), ({"cpus": float("nan")}, "number"),
        ({"memory_mb": 1}, "at least 16"), ({"timeout_s": 0}, "at least"), ({"memory_mb": 10**6}, "at most 4096"),
        ({"output_bytes": 17 * 1024 * 1024}, "at most"), ({"pids": 10**400}, "at most"),
    ]:
        with pytest.raises(LimitError, match=message):
            Limits.check(SETTINGS, bad)


def test_limits_resolve_fills_defaults_and_applies_ceilings():
    limits = Limits.resolve(SETTINGS.replace(memory_mb=Limit(256, 512)),
                            {"memory_mb": 4096, "pids": 16})
    assert (limits.memory_mb, limits.pids, limits.timeout_s) == (512, 16, 30)


def test_instance_id_names_the_redis_of_the_installation():
    one = instance_id(Settings(redis_url="redis://127.0.0.1:6379/0"))
    assert one == instance_id(Settings(redis_url="redis://:secret@127.0.0.1:6379/0"))
    assert one != instance_id(Settings(redis_url="redis://127.0.0.1:6380/0"))
    assert one != instance_id(Settings(redis_url="redis://127.0.0.1:6379/1"))
