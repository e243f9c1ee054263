"""The frame protocol between the worker and the in-sandbox runner (runtime/runner.py).

Frames the runner writes on its stdout: one type byte, a 4-byte big-endian length, the payload.
Requests to the runner (on its stdin) have the same header with the type REQUEST, followed by a
NONCE frame: 16 random bytes chosen for the run, which the runner's exit frame must carry back
(as "nonce", in hex). The run's own processes never learn it, so an exit frame they forge (where
they can write into the runner's stdout: under gVisor) is told from the runner's own, and the
stream is taken as garbled. The runner keeps its own copy of these constants: it runs on the
runtime image's bare Python, with the standard library only, and imports nothing of NanoGrid.
"""

from __future__ import annotations

import json
import secrets
import struct
from typing import Callable

FRAME_HEADER = struct.Struct(">cI")
STDOUT, STDERR, RESULT, EXIT = b"o", b"e", b"r", b"x"
ITEM = b"i"  # one item a streaming handler yielded, as JSON
REQUEST, NONCE = b"q", b"n"
NONCE_SIZE = 16


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def request_frame(spec: dict, input_json: str, nonce: bytes) -> bytes:
    """The request frame and the run's nonce frame after it."""
    payload = json.dumps({"spec": spec, "input": input_json}).encode()
    return FRAME_HEADER.pack(REQUEST, len(payload)) + payload + FRAME_HEADER.pack(NONCE, len(nonce)) + nonce


class FrameReader:
    """Parses the runner's frame stream incrementally, enforcing the output cap.

    User output beyond the cap is dropped (the head is kept) and `over_cap` is set so the
    caller kills the sandbox; nothing here buffers more than the cap plus one frame. A stream that
    stops being frames sets `garbled`: everything after it is ignored and the caller kills the run.
    So does an exit frame without the run's nonce: not the runner's. (The sandboxes always pass the
    nonce; None, which takes any exit frame, is for tests of the parsing alone.)
    """

    def __init__(self, output_cap: int, result_cap: int = 8 * 1024 * 1024,
                 on_output: Callable[[str, object], None] | None = None, nonce: bytes | None = None):
        """on_output(kind, value) sees the run's output as it arrives, within the cap: ("stdout" |
        "stderr", bytes) and ("item", a yielded JSON value)."""
        self.output_cap = output_cap
        self.nonce = None if nonce is None else nonce.hex()
        self.result_cap = result_cap
        self.on_output = on_output
        self.items: list | None = None  # a streaming handler's items, in order
        self.buffer = bytearray()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.result: dict | None = None
        self.exit: dict | None = None
        self.output_seen = 0
        self.over_cap = False
        self.garbled = False

    def feed(self, data: bytes) -> None:
        if self.garbled:
            return
        self.buffer += data
        while len(self.buffer) >= FRAME_HEADER.size:
            kind, length = FRAME_HEADER.unpack_from(self.buffer)
            if kind not in (STDOUT, STDERR, RESULT, EXIT, ITEM) or (kind in (RESULT, EXIT, ITEM)
                                                                   and length > self.result_cap):
                self.garbled = True
                self.buffer.clear()
                return
            if kind in (STDOUT, STDERR) and length > 1024 * 1024:
                self.garbled = True
                self.buffer.clear()
                return
            end = FRAME_HEADER.size + length
            if len(self.buffer) < end:
                return
            payload = bytes(self.buffer[FRAME_HEADER.size:end])
            del self.buffer[:end]
            self._frame(kind, payload)

    def _frame(self, kind: bytes, payload: bytes) -> None:
        if kind in (STDOUT, STDERR):
            room = self.output_cap - self.output_seen
            self.output_seen += len(payload)
            target = self.stdout if kind == STDOUT else self.stderr
            kept = payload[: max(room, 0)]
            target += kept
            if self.output_seen > self.output_cap:
                self.over_cap = True
            if kept and self.on_output is not None:
                self.on_output("stdout" if kind == STDOUT else "stderr", kept)
        elif kind == ITEM:
            try:
                value = json.loads(payload)
            except (ValueError, RecursionError):
                self.garbled = True  # the runner checked it: something else wrote into the stream
                return
            if self.items is None:
                self.items = []
            self.items.append(value)
            if self.on_output is not None:
                self.on_output("item", value)
        elif kind == RESULT:
            # Whatever the user code wrote into its result channel: it may be anything.
            try:
                value = json.loads(payload)
                if b"\\ud" in payload.lower():
                    value = _without_lone_surrogates(value)
            except (ValueError, RecursionError):
                value = {"ok": False, "error": "invalid_result", "message": "the result is not valid JSON"}
            self.result = value if isinstance(value, dict) else {"ok": False, "error": "invalid_result",
                                                                  "message": "the result is not a JSON object"}
        else:
            try:
                exit_info = json.loads(payload)
            except (ValueError, RecursionError):
                exit_info = None
            if not isinstance(exit_info, dict) or (self.nonce is not None
                                                   and exit_info.pop("nonce", None) != self.nonce):
                self.garbled = True  # a forged end of the run: the rest of the stream is not believed
                self.buffer.clear()
                return
            self.exit = exit_info


def _without_lone_surrogates(value):
    """JSON may escape half a surrogate pair, which no UTF-8 store accepts: make those U+FFFD."""
    text = json.dumps(value, ensure_ascii=False)
    return json.loads(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
