"""Completion callbacks over HTTP: the one place NanoGrid connects to an address a user chose.

A callback URL could point NanoGrid at what only it can reach: the cloud's metadata service
(169.254.169.254), a service on loopback, Redis or the AI node. So an address is refused when it
is loopback, link-local, unspecified, multicast or reserved, or one of the platform's own (this
host's names, the endpoints it is configured with), unless NANOGRID_CALLBACK_ALLOWED_NETWORKS
lists it. The rule is applied when a URL is accepted (`check_url`) and again to the address the
connection is made to (`post`): the name is resolved once per attempt, the addresses checked,
and the connection made to a checked address, so a name that resolves elsewhere the second time
(DNS rebinding) reaches nothing it should not. Redirects are not followed.

http.client rather than requests: the connection must go to the vetted address while TLS checks
the certificate for the name, which http.client allows by overriding connect() alone.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlparse

from nanogrid.config import Settings

MAX_URL_CHARS = 2048
Resolver = Callable[[str, int], list[str]]


class CallbackRefused(ValueError):
    """A callback URL or address that may not be used; the message says why."""


@dataclass(frozen=True)
class Delivery:
    """What one attempt got: the receiver's status, or the error that kept it from answering."""

    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def resolve(host: str, port: int) -> list[str]:
    """Every address host resolves to (the system resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CallbackRefused(f"the callback host {host!r} does not resolve ({exc.strerror})") from None
    except UnicodeError:
        raise CallbackRefused(f"the callback host {host!r} is not a valid host name") from None
    return sorted({info[4][0] for info in infos})


class Guard:
    """Which addresses a callback may reach, for one installation's settings."""

    def __init__(self, settings: Settings, resolver: Resolver = resolve):
        self.settings = settings
        self.resolver = resolver
        self.allowed = [ipaddress.ip_network(network) for network in settings.callback_allowed_networks]

    def check_url(self, url: object) -> str:
        """url if it is an http(s) URL whose host resolves only to addresses a callback may reach."""
        host, port, _ = self._parts(url)
        self.addresses(host, port)
        return str(url)

    def addresses(self, host: str, port: int) -> list[str]:
        """host's addresses, all of them allowed; CallbackRefused naming the first that is not."""
        addresses = self.resolver(host, port)
        if not addresses:
            raise CallbackRefused(f"the callback host {host!r} does not resolve")
        own = self._platform_addresses()
        for address in addresses:
            reason = self._refusal(ipaddress.ip_address(address.split("%", 1)[0]), own)
            if reason:
                shown = host if host == address else f"{host} ({address})"
                raise CallbackRefused(f"the callback address {shown} is {reason}; callbacks may not reach "
                                      "loopback, link-local or the platform's own addresses unless "
                                      "NANOGRID_CALLBACK_ALLOWED_NETWORKS lists them")
        return addresses

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Delivery:
        """POST body to url through a checked address; never follows a redirect."""
        host, port, tls = self._parts(url)
        parsed = urlparse(url)
        target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        try:
            address = self.addresses(host, port)[0]
        except CallbackRefused as exc:
            return Delivery(None, str(exc))
        connection_class = _PinnedHTTPS if tls else _PinnedHTTP
        connection = connection_class(host, port, address, timeout=self.settings.callback_timeout_s)
        try:
            connection.request("POST", target, body=body, headers={
                "Content-Type": "application/json", "User-Agent": "NanoGrid-Callback", **headers})
            response = connection.getresponse()
            response.read(64 * 1024)
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            return Delivery(None, f"{type(exc).__name__}: {exc}"[:500])
        finally:
            connection.close()
        return Delivery(status, None if 200 <= status < 300 else f"the receiver answered {status}")

    # -- the rule ---------------------------------------------------------------------------------

    def _parts(self, url: object) -> tuple[str, int, bool]:
        if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
            raise CallbackRefused(f"callback_url must be an http:// or https:// URL of at most {MAX_URL_CHARS} "
                                  "characters")
        try:
            parsed = urlparse(url)
        except ValueError:
            raise CallbackRefused("callback_url is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise CallbackRefused("callback_url must be an http:// or https:// URL with a host")
        if parsed.username or parsed.password:
            raise CallbackRefused("callback_url may not carry a user name or password")
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise CallbackRefused("callback_url has an invalid port") from None
        return parsed.hostname, port, parsed.scheme == "https"

    def _refusal(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, own: set) -> str | None:
        if any(address in network for network in self.allowed):
            return None
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            return self._refusal(mapped, own)
        for reason, holds in (("a loopback address", address.is_loopback),
                              ("a link-local address (such as the cloud metadata service)", address.is_link_local),
                              ("unspecified", address.is_unspecified), ("a multicast address", address.is_multicast),
                              ("a reserved address", address.is_reserved), ("the platform's own", address in own)):
            if holds:
                return reason
        return None

    def _platform_addresses(self) -> set:
        """This host's addresses and those of the services the platform is configured to use."""
        settings = self.settings
        hosts = {socket.gethostname(), socket.getfqdn()}
        for url in (settings.redis_url, settings.broker_url, settings.ai_endpoint, settings.aws_endpoint_url or "",
                    settings.url):
            hostname = urlparse(url).hostname if "://" in url else None
            if hostname:
                hosts.add(hostname)
        return {ipaddress.ip_address(address.split("%", 1)[0]) for address in _quietly_resolved(hosts)}


def _quietly_resolved(hosts: Iterable[str]) -> set[str]:
    found = set()
    for host in hosts:
        try:
            found |= {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
        except OSError:
            continue  # a name that does not resolve here is no address to protect
    return found


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a vetted address, with the URL's host in the Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a vetted address; the certificate is checked against the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
