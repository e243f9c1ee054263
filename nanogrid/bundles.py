"""Code bundles: turning an upload (.py source or .zip) into a checked, normalised zip.

Everything a client sends is checked here before anything is stored: UTF-8 source that parses,
zip members with safe relative names, no links, bounded count, size and compression ratio.
The stored bundle is rebuilt deterministically, so its sha256 identifies the code exactly and
the worker extracts only what passed these checks.
"""

from __future__ import annotations

import ast
import hashlib
import io
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nanogrid.config import Settings

ENTRY = "main.py"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class BundleError(ValueError):
    """The upload is not acceptable; the message tells the client why."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class Bundle:
    data: bytes
    sha256: str
    handler: str | None


def from_source(source: str | bytes, handler: str | None) -> Bundle:
    text = _decode(source if isinstance(source, bytes) else source.encode("utf-8", "surrogatepass"), ENTRY)
    return _build({ENTRY: text.encode()}, handler)


def from_zip(data: bytes, handler: str | None, settings: Settings) -> Bundle:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise BundleError(f"not a valid zip file: {exc}") from None
    if len(members) > settings.max_zip_members:
        raise BundleError(f"the zip has {len(members)} members; the limit is {settings.max_zip_members}", too_large=True)
    files: dict[str, bytes] = {}
    total = 0
    for info in members:
        name = _safe_member_name(info)
        if name is None:
            continue
        declared = max(info.file_size, 1)
        if info.compress_size and declared / info.compress_size > settings.max_compression_ratio:
            raise BundleError(f"{info.filename}: compression ratio above {settings.max_compression_ratio}", too_large=True)
        # file_size in the header can lie, so count what decompression actually yields.
        budget = settings.max_unpacked_bytes - total
        try:
            with archive.open(info) as member:
                content = member.read(budget + 1)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
            raise BundleError(f"{info.filename}: cannot be read: {exc}") from None
        total += len(content)
        if total > settings.max_unpacked_bytes:
            raise BundleError(f"the zip unpacks to more than {settings.max_unpacked_bytes} bytes", too_large=True)
        if name in files:
            raise BundleError(f"{info.filename}: duplicate member")
        files[name] = content
    if ENTRY not in files:
        raise BundleError(f"the zip must contain {ENTRY} at its top level")
    files[ENTRY] = _decode(files[ENTRY], ENTRY).encode()
    return _build(files, handler)


def extract(data: bytes, destination: Path) -> None:
    """Unpack a stored bundle (already normalised) into a fresh run directory."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            name = _safe_member_name(info)
            if name is None:
                continue
            target = destination.joinpath(*PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            target.write_bytes(archive.read(info))
            target.chmod(0o644)


def _safe_member_name(info: zipfile.ZipInfo) -> str | None:
    """The member's normalised name, None for a directory entry; BundleError when unsafe."""
    raw = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise BundleError(f"{raw}: symbolic links are not allowed in a bundle")
    if "\\" in raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":") or "\x00" in raw:
        raise BundleError(f"{raw}: member names must be relative POSIX paths")
    parts = PurePosixPath(raw).parts
    if any(p in ("..", ".") for p in parts):
        raise BundleError(f"{raw}: member names may not contain '..' or '.'")
    if raw.endswith("/"):
        return None
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        raise BundleError(f"{raw}: only regular files are allowed in a bundle")
    if PurePosixPath(raw).name.startswith(".nanogrid"):
        raise BundleError(f"{raw}: names starting with .nanogrid are reserved")
    return "/".join(parts)


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{name} is not valid UTF-8 (byte {exc.start})") from None
    try:
        ast.parse(text, filename=name)
    except SyntaxError as exc:
        raise BundleError(f"{name} has a syntax error on line {exc.lineno}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise BundleError(f"{name} cannot be parsed: {type(exc).__name__}") from None
    return text


def _build(files: dict[str, bytes], handler: str | None) -> Bundle:
    entry_tree = ast.parse(files[ENTRY])
    handler = detect_handler(entry_tree, handler)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, files[name])
    data = buffer.getvalue()
    return Bundle(data=data, sha256=hashlib.sha256(data).hexdigest(), handler=handler)


def detect_handler(tree: ast.Module, requested: str | None) -> str | None:
    """The handler to call, or None to run main.py as a script.

    A handler the client names is trusted (it may be created dynamically); otherwise a top-level
    `handler` definition or assignment selects handler mode.
    """
    if requested is not None:
        if not requested.isidentifier():
            raise BundleError(f"handler {requested!r} is not a Python identifier")
        return requested
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "handler":
            return "handler"
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "handler" for t in node.targets):
            return "handler"
    return None
