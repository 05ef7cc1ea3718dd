"""Per-client rate limits by class, decided from method, host and path alone (no body is read).

Each request is put in one class (registration, poll, reply, publish, relay) and counted against that
class's budget for its client (an address, an IPv6 /64: :func:`reversehub.core.limits.client_key`)
and, where the path shows one, against the client's budget for the name it concerns: the relay name
of a public URL, the registration behind a request URL. A name's budget is never shared between
clients, so no client can spend it for the others. Budgets that need the body (the
name a registration claims, the topics of a publish, the callback host of a subscription, and the
class of ``POST /hub``, whose ``hub.mode`` says whether it publishes or subscribes) are counted by
the handler that parsed it (``relay.endpoints``, ``hub.endpoints``), on the same counters
(:class:`reversehub.core.limits.Limits`). A request over a budget gets 429 with ``Retry-After`` (the
end of the window) and is not counted further, so an abusive client does not also drain a name's
budget.

Polls are long-held ``GET``s; the limit is on how often they start, never on how many are held.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.routes import Kind, RelayUrls
from reversehub.core.limits import hidden, reason
from reversehub.core.services import Services
from reversehub.core.settings import Settings

__all__ = ["RateLimitMiddleware", "classify"]


def classify(scope: Scope, urls: RelayUrls) -> tuple[str | None, list[str]]:
    """(class, ["KEY=name", ...]) for a request, from its method, host and path; class None: not limited here.

    The relay's URLs are recognized by its route table (``urls``), so a host-based name counts
    against the same budgets as a path-based one. No body is read: what a body says is counted by
    the handler that parses it.
    """
    method = scope["method"]
    found = urls.find(scope)
    if found is not None:
        kind, params = found
        if kind is Kind.GATEWAY and method == "POST":
            return "registration", []
        if kind is Kind.PRIVATE and method in ("PUT", "DELETE"):
            return "registration", []
        if kind is Kind.REQUEST and method == "GET":
            return "poll", [f"registration={hidden(scope['path'])}"]
        if kind is Kind.REQUEST:
            # Replies: a POST to a made-up request URL is refused unread, but still costs a lookup.
            return "reply", []
        if kind is Kind.PUBLIC:
            return "relay", [f"name={params['name'].lower()}"]
        return None, []
    if scope["path"] == "/publish" and method == "POST":
        return "publish", []
    return None, []


class RateLimitMiddleware:
    """Counts each request against its class's per-client budget (:func:`classify`) and answers 429
    with ``Retry-After`` when one is spent; the request itself, body included, passes on untouched."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.urls = RelayUrls(settings)

    def unlimited(self, scope: Scope) -> bool:
        """No limit applies to this request: limits off, the app not started, an exempt or in-process client."""
        if scope["type"] != "http" or self.settings.rate_limit_window <= 0 or "app" not in scope:
            return True
        services: Services | None = scope["app"].state.services
        return services is None or not services.limits.applies(scope.get("client"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.unlimited(scope):
            await self.app(scope, receive, send)
            return
        kind, names = classify(scope, self.urls)
        if kind is not None:
            limits = scope["app"].state.services.limits
            client = limits.client(scope.get("client"))
            checks = [(kind, client)]
            checks += [(f"{kind}:{n.split('=', 1)[0]}", f"{n},{client}") for n in names]
            for limit, who in checks:
                retry_after = await limits.hit(limit, who)
                if retry_after is not None:
                    response = PlainTextResponse(
                        reason(limit) + "\n", status_code=429, headers={"Retry-After": str(retry_after)}
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
