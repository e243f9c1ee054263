"""FrameReader (the runner's frame stream) and classify (raw facts -> the job's terminal state)."""

from __future__ import annotations

import json
import signal

import pytest

from nanogrid.sandbox import EXIT, FRAME_HEADER, RESULT, STDERR, STDOUT, FrameReader, Limits, RawRun, classify

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


def test_fill():
    reader = FrameReader(1000)
    reader.feed(frame(STDOUT, b"out") + json_frame(EXIT, {"exit_code": None, "signal": 9, "memory_error": True}))
    raw = RawRun()
    reader.fill(raw)
    assert (raw.stdout, raw.exit_code, raw.exit_signal, raw.memory_error) == (b"out", None, 9, True)
    assert not raw.output_truncated


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
], ids=["cancelled", "timeout", "output", "oom", "memory-error", "file", "sandbox", "signal", "exit-code",
        "invalid-result", "malformed-result"])
def test_error_types_and_their_precedence(raw, expected):
    assert error_type(raw) == expected


def test_messages_name_the_limit_and_the_detail():
    assert "5 s" in classify(finished(timed_out=True), LIMITS).error["message"]
    assert "128 MB" in classify(finished(oom_killed=True), LIMITS).error["message"]
    assert "10 MB" in classify(finished(exit_code=None, exit_signal=signal.SIGXFSZ), LIMITS).error["message"]
    assert "SIGSEGV" in classify(finished(exit_code=None, exit_signal=signal.SIGSEGV), LIMITS).error["message"]
    assert "python3: not found" in classify(RawRun(runner_stderr=b"python3: not found"), LIMITS).error["message"]
    truncated = classify(finished(output_truncated=True), LIMITS)
    assert "1000 bytes" in truncated.error["message"] and truncated.extra == {"truncated": True}


def test_failed_outcome_keeps_the_exit_code():
    assert classify(finished(exit_code=3), LIMITS).exit_code == 3
