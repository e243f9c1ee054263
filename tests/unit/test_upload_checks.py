"""What an upload must be, as Python reads it: encodings, NUL bytes, a handler main.py defines; and
that a failing run's traceback shows the user's frames only."""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest

from nanogrid import bundles
from nanogrid.config import Settings
from nanogrid.limits import Limits
from nanogrid.outcomes import classify
from nanogrid.sandbox import RunSpec
from nanogrid.sandbox.process import ProcessSandbox

LIMITS = Limits(timeout_s=10, memory_mb=256, cpus=1.0, pids=64, open_files=64, file_size_mb=10, tmpfs_mb=32,
                output_bytes=64 * 1024)


@pytest.mark.parametrize("source", [
    "\ufeffdef handler(event, context):\n    return 'bom'\n",  # a byte-order mark, as some editors save
    b"\xef\xbb\xbfdef handler(event, context):\n    return 'bom'\n",
    b"# -*- coding: latin-1 -*-\nword = '\xe9t\xe9'\ndef handler(event, context):\n    return word\n",
])
def test_source_python_accepts_is_accepted(source):
    assert bundles.from_source(source, None).handler == "handler"


def test_a_declared_encoding_keeps_its_bytes_so_the_sandbox_reads_what_was_sent(tmp_path):
    source = b"# -*- coding: latin-1 -*-\nword = '\xe9t\xe9'\ndef handler(event, context):\n    return word\n"
    bundle = bundles.from_source(source, None)
    bundles.extract(bundle.data, tmp_path)
    assert (tmp_path / "main.py").read_bytes() == source
    raw = ProcessSandbox(Settings()).run(RunSpec("job-latin1", "fn-test", tmp_path, "handler", LIMITS))
    assert classify(raw, LIMITS).result == "été"


@pytest.mark.parametrize("source, handler, message", [
    ("x = 1\x00\n", None, "main.py contains a NUL byte (at byte 5); Python source cannot"),
    ("def handler(:\n", None, "main.py has a syntax error on line 1: invalid syntax"),
    ("def run(event, context):\n    return 1\n", "missing",
     "handler 'missing': main.py defines no top-level 'missing' (a def, an assignment or an import)"),
    ("# coding: latin-1\nx = 1\n", None,
     "main.py: the code is sent as text, so it is UTF-8; remove its coding declaration or upload the file as it is"),
    (b"\xff\xfe not utf-8\n", None, "main.py is not valid UTF-8 (byte 0) and declares no other encoding"),
])
def test_what_python_would_refuse_is_refused_with_a_clear_message(source, handler, message):
    with pytest.raises(bundles.BundleError) as refused:
        bundles.from_source(source, handler)
    assert str(refused.value) == message


@pytest.mark.parametrize("source, handler", [
    ("def run(event, context):\n    return 1\n", "run"),
    ("import json as decode\n", "decode"),
    ("try:\n    from fast import entry\nexcept ImportError:\n    def entry(event, context):\n        return 0\n",
     "entry"),
    ("class Handler:\n    def __call__(self, event, context):\n        return 0\nrun = Handler()\n", "run"),
])
def test_a_named_handler_bound_at_the_top_level_is_accepted(source, handler):
    assert bundles.from_source(source, handler).handler == handler


def run_process(tmp_path, files: dict[str, str], handler: str | None = "handler"):
    code_dir = tmp_path / f"code-{uuid.uuid4().hex[:8]}"
    code_dir.mkdir()
    for name, text in files.items():
        (code_dir / name).write_text(textwrap.dedent(text))
    spec = RunSpec(f"job-{uuid.uuid4().hex[:8]}", "fn-test", code_dir, handler, LIMITS, input_json=json.dumps({}))
    raw = ProcessSandbox(Settings()).run(spec)
    return raw, classify(raw, LIMITS)


def test_a_traceback_shows_only_the_users_frames(tmp_path):
    raw, outcome = run_process(tmp_path, {
        "main.py": """
            import helper
            def handler(event, context):
                return helper.boom()
            """,
        "helper.py": """
            def boom():
                try:
                    {}["missing"]
                except KeyError as exc:
                    raise ValueError("nope") from exc
            """,
    })
    assert outcome.error["type"] == "runtime_error"
    stderr = raw.stderr.decode()
    assert 'main.py", line 4, in handler' in stderr and 'helper.py", line 6, in boom' in stderr
    assert "The above exception was the direct cause" in stderr  # the chain is kept, filtered too
    for hidden in ("runner.py", "importlib", "<frozen"):
        assert hidden not in stderr, stderr


def test_an_import_error_at_the_top_shows_no_import_machinery(tmp_path):
    raw, outcome = run_process(tmp_path, {"main.py": "import no_such_module\n"}, handler=None)
    stderr = raw.stderr.decode()
    assert stderr.splitlines() == [
        "Traceback (most recent call last):",
        f'  File "{tmp_path}/{next(tmp_path.iterdir()).name}/main.py", line 1, in <module>',
        "    import no_such_module",
        "ModuleNotFoundError: No module named 'no_such_module'",
    ], stderr


def test_calling_the_ai_node_where_none_is_configured_is_ai_unavailable(tmp_path):
    """The same error type as a node that is down (no AI_ENDPOINT means no AI channel for the run)."""
    from nanogrid.worker.execute import ai_unavailable

    raw, outcome = run_process(tmp_path, {"main.py": """
        import nanogrid_ai
        def handler(event, context):
            return nanogrid_ai.generate("llama3.2", "hello")
        """})
    ai_unavailable(outcome, raw)
    assert outcome.error["type"] == "ai_unavailable", outcome.error
    assert "AI_ENDPOINT is not configured" in outcome.error["message"]
    assert "nanogrid_ai.py" not in raw.stderr.decode()
