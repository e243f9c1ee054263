"""A private package index for the tests: PEP 503 "simple" pages over HTTP, behind basic auth.

Its packages are made here, from nothing: wheels are written as the zip files they are (a module,
METADATA, WHEEL and RECORD), source distributions as a tar.gz with PKG-INFO. The server records
every request, so a test can show which projects pip asked it for, and refuses any request
without the credentials, so a build that reached it proved it passed them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import http.server
import io
import os
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Iterator

USER = "builder"
PASSWORD = "s3cret-index-token"


def wheel(folder: Path, name: str, version: str, payload_bytes: int = 0) -> Path:
    """A pure-Python wheel of a module `name` whose VALUE is "<name> <version>"; payload_bytes: a
    data file of that many random bytes inside the package (for the size bound)."""
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'VALUE = "{name} {version}"\n'.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: nanogrid-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if payload_bytes:
        files[f"{module}/blob.bin"] = os.urandom(payload_bytes)
    record = "".join(f"{path},sha256={_digest(data)},{len(data)}\n" for path, data in files.items())
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def sdist(folder: Path, name: str, version: str) -> Path:
    """A source distribution only (no wheel): pip could install it only by building it."""
    root = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{root}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for member, data in ((f"{root}/PKG-INFO", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"),
                             (f"{root}/setup.py", "raise SystemExit('this must never run on the host')\n")):
            info = tarfile.TarInfo(member)
            info.size = len(data.encode())
            archive.addfile(info, io.BytesIO(data.encode()))
    return path


BACKEND = """
import os, zipfile, base64, hashlib

def _digest(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    # Says where it was built: the uid of the process that ran this build code.
    files = {"{module}/__init__.py": ('VALUE = "built by uid %d"\\n' % os.getuid()).encode(),
             "{module}-{version}.dist-info/METADATA": b"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n",
             "{module}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    record = "".join("%s,sha256=%s,%d\\n" % (p, _digest(d), len(d)) for p, d in files.items())
    files["{module}-{version}.dist-info/RECORD"] = (record + "{module}-{version}.dist-info/RECORD,,\\n").encode()
    name = "{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return name

def build_sdist(sdist_directory, config_settings=None):
    raise NotImplementedError
"""


def buildable_sdist(folder: Path, name: str, version: str) -> Path:
    """A source distribution whose in-tree build backend (no build requirements) makes a wheel
    whose VALUE names the uid that built it: where the build code ran."""
    module = name.replace("-", "_")
    root = f"{module}-{version}"
    backend = BACKEND.replace("{module}", module).replace("{version}", version).replace("{name}", name)
    members = {
        f"{root}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{root}/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        f"{root}/backend.py": backend,
    }
    path = folder / f"{root}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for member, text in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class PackageIndex:
    def __init__(self, folder: Path, port: int, address: str = "127.0.0.1"):
        self.folder = folder
        self.port = port
        self.address = address
        self.requests: list[str] = []  # the paths asked for, in order
        self.refused = 0  # requests without the credentials

    def url(self, with_credentials: bool = True) -> str:
        auth = f"{USER}:{PASSWORD}@" if with_credentials else ""
        return f"http://{auth}{self.address}:{self.port}/simple/"

    def projects_asked(self) -> set[str]:
        return {path.strip("/").split("/")[1] for path in self.requests
                if path.startswith("/simple/") and path.strip("/").count("/") == 1}

    def files_of(self, project: str) -> list[Path]:
        prefix = project.replace("-", "_")
        return sorted(p for p in self.folder.iterdir() if p.name.split("-", 1)[0].lower() == prefix)


def _handler(index: PackageIndex):
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the requests are in index.requests
            pass

        def do_GET(self):
            if self.headers.get("Authorization") != expected:
                index.refused += 1
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="index"')
                self.end_headers()
                return
            index.requests.append(self.path)
            parts = [part for part in self.path.split("?")[0].split("/") if part]
            if len(parts) == 2 and parts[0] == "simple":
                files = index.files_of(parts[1])
                if not files:
                    return self._send(404, b"not found", "text/plain")
                links = "".join(f'<a href="/files/{html.escape(p.name)}#sha256='
                                f'{hashlib.sha256(p.read_bytes()).hexdigest()}">{html.escape(p.name)}</a>\n'
                                for p in files)
                return self._send(200, f"<html><body>{links}</body></html>".encode(), "text/html")
            if len(parts) == 2 and parts[0] == "files" and (index.folder / parts[1]).is_file():
                return self._send(200, (index.folder / parts[1]).read_bytes(), "application/octet-stream")
            self._send(404, b"not found", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def serving(folder: Path, address: str = "127.0.0.1") -> Iterator[PackageIndex]:
    """The index of folder's packages on a free port of address (the host's on Docker's bridge
    for builds in containers), for as long as the block lasts."""
    folder.mkdir(parents=True, exist_ok=True)
    index = PackageIndex(folder, 0, address)
    server = http.server.ThreadingHTTPServer((address, 0), _handler(index))
    index.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="package-index", daemon=True)
    thread.start()
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()
