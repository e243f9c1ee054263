"""Code bundles: turning an upload (.py source or .zip) into a checked, normalised zip.

Everything a client sends is checked here before anything is stored: source that Python would
read (UTF-8, with or without a byte-order mark, or the encoding its coding declaration names) and
that parses, a handler that main.py defines, zip members with safe relative names, no links,
bounded count, size and compression ratio. The stored bundle is rebuilt deterministically, so its
sha256 identifies the code exactly and the worker extracts only what passed these checks.
"""

from __future__ import annotations

import ast
import hashlib
import io
import stat
import tokenize
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nanogrid.config import Settings

ENTRY = "main.py"
REQUIREMENTS = "requirements.txt"  # beside main.py in a zip: the function's requirements
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
    requirements: str | None = None  # the zip's requirements.txt, as text


def from_source(source: str | bytes, handler: str | None) -> Bundle:
    """A bundle of one main.py: bytes as uploaded (a .py file), or text (a JSON `code` string)."""
    if isinstance(source, str):
        data = source.encode("utf-8", "surrogatepass")
        if _declared_encoding(data, ENTRY) not in ("utf-8", "utf-8-sig"):
            raise BundleError(f"{ENTRY}: the code is sent as text, so it is UTF-8; remove its coding declaration "
                              "or upload the file as it is")
    else:
        data = source
    _decode(data, ENTRY)
    return _build({ENTRY: data}, handler)


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
    _decode(files[ENTRY], ENTRY)
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


def _declared_encoding(data: bytes, name: str) -> str:
    """The encoding Python reads the source in: a byte-order mark, a coding declaration, or UTF-8."""
    try:
        return tokenize.detect_encoding(io.BytesIO(data).readline)[0]
    except SyntaxError as exc:  # not UTF-8 and no declaration, an unknown encoding, a mark and a declaration that disagree
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as undecodable:
            raise BundleError(f"{name} is not valid UTF-8 (byte {undecodable.start}) and declares no other "
                              "encoding") from None
        raise BundleError(f"{name}: {exc.msg}") from None


def _decode(data: bytes, name: str) -> str:
    """The source as Python will read it, checked to parse."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise BundleError(f"{name} contains a NUL byte (at byte {nul}); Python source cannot")
    encoding = _declared_encoding(data, name)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise BundleError(f"{name} is not valid {encoding} (byte {exc.start})") from None
    try:
        ast.parse(text, filename=name)
    except SyntaxError as exc:
        where = f" on line {exc.lineno}" if exc.lineno else ""
        raise BundleError(f"{name} has a syntax error{where}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise BundleError(f"{name} cannot be parsed: {type(exc).__name__}") from None
    return text


def _build(files: dict[str, bytes], handler: str | None) -> Bundle:
    entry_tree = ast.parse(_decode(files[ENTRY], ENTRY))
    handler = detect_handler(entry_tree, handler)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, files[name])
    data = buffer.getvalue()
    requirements = None
    if REQUIREMENTS in files:
        try:
            requirements = files[REQUIREMENTS].decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BundleError(f"{REQUIREMENTS} is not valid UTF-8 (byte {exc.start})") from None
    return Bundle(data=data, sha256=hashlib.sha256(data).hexdigest(), handler=handler, requirements=requirements)


def detect_handler(tree: ast.Module, requested: str | None) -> str | None:
    """The handler to call, or None to run main.py as a script.

    A handler the client names must be a name main.py binds at its top level (a def, a class, an
    assignment or an import, also inside a top-level if/try/with); otherwise a top-level `handler`
    selects handler mode.
    """
    names = top_level_names(tree)
    if requested is not None:
        if not requested.isidentifier():
            raise BundleError(f"handler {requested!r} is not a Python identifier")
        if requested not in names:
            raise BundleError(f"handler {requested!r}: {ENTRY} defines no top-level {requested!r} "
                              "(a def, an assignment or an import)")
        return requested
    return "handler" if "handler" in names else None


def top_level_names(tree: ast.Module) -> set[str]:
    """The names a module binds when it runs, outside its functions and classes."""
    names: set[str] = set()
    blocks = [tree.body]
    while blocks:
        for node in blocks.pop():
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                blocks += [getattr(node, part) for part in ("body", "orelse", "finalbody") if hasattr(node, part)]
                blocks += [handler.body for handler in getattr(node, "handlers", [])]
    return names
