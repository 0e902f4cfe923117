"""The Host header check against DNS rebinding: a web page on another site can name a service on 127.0.0.1 with a
domain of its own that resolves there; the browser then sends that domain as the Host, which the service refuses."""

import ipaddress
import socket

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carvana import CarvanaError

LOOPBACK = ["127.0.0.1", "localhost", "[::1]"]
WILDCARDS = ("0.0.0.0", "::", "")


def host_name(address: str) -> str:
    """An address as a Host header names it (an IPv6 one in brackets)."""
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        return address.lower()  # a name


def allowed_hosts(host: str, allowed: list[str] | None) -> list[str]:
    """conf/serve.yaml's allowed_hosts, or for null the names of `host`: the loopback names, and for 0.0.0.0 this
    machine's name and addresses too."""
    if allowed is not None:
        if not isinstance(allowed, list) or not all(isinstance(h, str) and h for h in allowed):
            raise CarvanaError(f"allowed_hosts={allowed} must be a list of host names, e.g. '[example.com, "
                               "\"*.example.com\"]' ('[\"*\"]': any), or null")
        wrong = [h for h in allowed if "*" in h[1:] or (h.startswith("*") and h != "*" and not h.startswith("*."))]
        if wrong:
            raise CarvanaError(f"allowed_hosts: {wrong[0]} is not a host name: a wildcard is '*' or '*.example.com'")
        return allowed
    names = [*LOOPBACK, host_name(host)] if host not in WILDCARDS else list(LOOPBACK)
    if host in WILDCARDS:
        machine = socket.gethostname()
        names += [machine.lower(), socket.getfqdn().lower()]
        try:
            names += [host_name(info[4][0]) for info in socket.getaddrinfo(machine, None)]
        except socket.gaierror:
            pass  # a machine whose name does not resolve: clients use its address, which allowed_hosts then lists
    return list(dict.fromkeys(names))


class HostCheck(TrustedHostMiddleware):
    """Starlette's TrustedHostMiddleware, its refusal the service's one JSON line naming the fix."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]):
        super().__init__(self._trusted, allowed_hosts, www_redirect=False)
        self.inner = app

    async def _trusted(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["carvana.host_trusted"] = True
        await self.inner(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_refusal(message: Message) -> None:
            if scope.get("carvana.host_trusted"):
                await send(message)
            elif message["type"] == "http.response.start":  # TrustedHostMiddleware's plain-text 400: ours instead
                host = dict(scope["headers"]).get(b"host", b"").decode(errors="replace") or "no Host header"
                names = ", ".join(self.allowed_hosts)
                await JSONResponse({"error": f"Host {host} is not a name of this service ({names}): use one of those, "
                                             "or start it with allowed_hosts=[...] naming it"},
                                   status_code=400)(scope, receive, send)

        await super().__call__(scope, receive, send_refusal)
