"""Name resolution with the target policy applied, shared by every probe path of a worker.

Contract of `Resolver.resolve(host)`:
- returns the addresses a probe may connect to, as [(family, ip)], policy-filtered, in resolver
  order; IP literals are returned as-is (no lookup) after the same policy check;
- raises `ProbeFailure('blocked')` when every address is denied (deny_networks, or outside
  allow_networks when that is set) — the probe never connects to a denied address;
- raises `ProbeFailure('dns')` when the name does not resolve;
- records the lookup's duration and completion in the current check's `Timings`.

Answers are cached for DNS_CACHE_S (getaddrinfo gives no TTL) and concurrent lookups of one name
share a single getaddrinfo call, so thousands of checks of one host cost one lookup. Failures are
not cached. Names under the special-use `.invalid` TLD (RFC 6761) fail without a lookup.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from time import perf_counter

from engine.probes.outcome import ProbeFailure, Timings, short
from engine.settings import ProbeSettings

DNS_CACHE_S = 10.0
DNS_CACHE_MAX = 50_000
Addr = tuple[int, str]  # (socket family, ip)
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetPolicy:
    """Which addresses may be probed: not in deny_networks and, if allow_networks is set, in it."""

    __slots__ = ("deny", "allow", "_verdicts")

    def __init__(self, settings: ProbeSettings) -> None:
        self.deny: tuple[_Net, ...] = tuple(ipaddress.ip_network(n, strict=False)
                                            for n in settings.deny_networks)
        self.allow: tuple[_Net, ...] = tuple(ipaddress.ip_network(n, strict=False)
                                             for n in settings.allow_networks)
        self._verdicts: dict[str, bool] = {}

    def _permits(self, ip: _IP) -> bool:
        forms: list[_IP] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)  # ::ffff:169.254.169.254 is 169.254.169.254
        for form in forms:
            if any(form in net for net in self.deny):
                return False
        if self.allow:
            return any(form in net for form in forms for net in self.allow)
        return True

    def permits(self, ip: str) -> bool:
        """Verdict for one textual IP (memoised; the set of addresses a worker sees is small)."""
        verdict = self._verdicts.get(ip)
        if verdict is None:
            verdict = self._permits(ipaddress.ip_address(ip.split("%", 1)[0]))
            if len(self._verdicts) >= DNS_CACHE_MAX:
                self._verdicts.clear()
            self._verdicts[ip] = verdict
        return verdict


_LITERALS: dict[str, str | None] = {}


def literal_ip(host: str) -> str | None:
    """The IP if `host` is an IP literal (brackets allowed), else None. Memoised."""
    try:
        return _LITERALS[host]
    except KeyError:
        pass
    name = host[1:-1] if host.startswith("[") else host
    ip: str | None = None
    if name and (name[-1].isdigit() or ":" in name):  # a DNS name's last label is never numeric
        try:
            ip = str(ipaddress.ip_address(name))
        except ValueError:
            pass
    if len(_LITERALS) >= DNS_CACHE_MAX:
        _LITERALS.clear()
    _LITERALS[host] = ip
    return ip


class Resolver:
    """Per-worker cached resolver applying the `TargetPolicy` (see module docstring)."""

    def __init__(self, settings: ProbeSettings, ttl: float = DNS_CACHE_S) -> None:
        self.policy = TargetPolicy(settings)
        self.ttl = ttl
        self._cache: dict[str, tuple[float, list[Addr]]] = {}
        self._inflight: dict[str, asyncio.Future[list[Addr]]] = {}

    def check_literal(self, host: str, timings: Timings | None = None) -> list[Addr] | None:
        """For an IP-literal host: [(family, ip)] or ProbeFailure('blocked'); None for a name."""
        ip = literal_ip(host)
        if ip is None:
            return None
        if not self.policy.permits(ip):
            raise ProbeFailure("blocked", f"target {ip} is blocked by policy")
        if timings is not None:
            timings.resolved = True
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)]

    async def resolve(self, host: str, timings: Timings | None = None) -> list[Addr]:
        literal = self.check_literal(host, timings)
        if literal is not None:
            return literal
        t = perf_counter()
        hit = self._cache.get(host)
        if hit is not None and hit[0] > t:
            addrs = hit[1]
        else:
            fut = self._inflight.get(host)
            if fut is None:
                fut = asyncio.ensure_future(self._lookup(host))
                self._inflight[host] = fut
                fut.add_done_callback(lambda f, h=host: self._done(h, f))
            # shield: one check's deadline must not cancel a lookup others are waiting on
            try:
                addrs = await asyncio.shield(fut)
            except BaseException:
                fut = None  # the traceback holds this frame: exc -> tb -> frame -> fut -> exc
                raise
        if timings is not None:
            end = perf_counter()
            timings.dns_ms = round((end - t) * 1000.0, 3)
            timings.connect0 = end
            timings.resolved = True
        allowed = [a for a in addrs if self.policy.permits(a[1])]
        if not allowed:
            raise ProbeFailure("blocked", f"{host} resolves to {addrs[0][1]}, blocked by policy")
        return allowed

    def _done(self, host: str, fut: asyncio.Future[list[Addr]]) -> None:
        self._inflight.pop(host, None)
        if not fut.cancelled() and fut.exception() is None:
            if len(self._cache) >= DNS_CACHE_MAX:
                self._cache.pop(next(iter(self._cache)))  # oldest insertion first
            self._cache[host] = (perf_counter() + self.ttl, fut.result())

    async def _lookup(self, host: str) -> list[Addr]:
        name = host.rstrip(".").lower()
        if name == "invalid" or name.endswith(".invalid"):
            raise ProbeFailure("dns", f"{host}: name does not resolve (special-use .invalid)")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise ProbeFailure("dns", short(f"{host}: {exc.strerror or exc}")) from None
        except UnicodeError:
            raise ProbeFailure("invalid", short(f"{host}: not a valid host name")) from None
        addrs: list[Addr] = []
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                item = (int(family), str(sockaddr[0]))
                if item not in addrs:
                    addrs.append(item)
        if not addrs:
            raise ProbeFailure("dns", f"{host}: no IPv4/IPv6 address")
        return addrs

    def clear(self) -> None:
        self._cache.clear()
