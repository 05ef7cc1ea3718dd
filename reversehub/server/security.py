"""Who may register, publish and administer: tokens, trusted networks, name reservations.

:class:`SecurityMiddleware` guards the paths, so the relay and the hub need no code of their own:

- ``POST /reversehttp`` (registration). ReverseHttp leaves who may enrol to the gateway's operator;
  with ``--registration-token`` the gateway asks for plain HTTP authentication:
  ``Authorization: Bearer TOKEN`` or Basic with TOKEN as the password (any user name), else 401
  with ``WWW-Authenticate``. A name matching a
  ``--reserve-name PATTERN=TOKEN`` may be claimed only with that registration ``token`` (403).
- ``GET /reversehttp`` (the relay's list of names) needs ``--admin-token`` as Bearer when one is set.
- ``POST /publish`` and ``POST /hub`` with ``hub.mode=publish``. With ``--publish-token`` (or a
  ``--topic-token PATTERN=TOKEN`` covering the topic) only holders may publish (401). Without one,
  ``hub.url`` pings stay open: the hub fetches the content itself, so a ping cannot forge it. A fat
  ping carries its content, so it is taken only from ``--trusted-networks`` (403).

Every token is kept as a SHA-256 digest (:func:`reversehub.core.settings.token_digest`) and compared with
:func:`hmac.compare_digest` on digests, so neither the comparison's timing nor a memory dump reveals it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reversehub.core.contracts import IN_PROCESS_CLIENT
from reversehub.core.policy import matches
from reversehub.core.settings import Settings, hash_token

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Form = list[tuple[str, str]]

FORM_TYPE = "application/x-www-form-urlencoded"
# Scope key under which the first middleware that read a form body leaves it for the next one.
_FORM_KEY = "reversehub.form"
MAX_FIELDS = 1000


# Tokens -----------------------------------------------------------------------------------------
def token_matches(presented: str | None, digest: str | None) -> bool:
    """Constant-time check of a presented token against a stored ``sha256:`` digest.

    What is presented is always hashed, even if it looks like a digest: knowing the digest (from a
    configuration file, say) must not be as good as knowing the token.
    """
    if presented is None or digest is None:
        return False
    return hmac.compare_digest(hash_token(presented), digest)


def presented_token(headers: Headers) -> str | None:
    """The token of ``Authorization: Bearer T`` or the password of ``Authorization: Basic``."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def split_pair(pair: str) -> tuple[str, str]:
    """``"PATTERN=sha256:…"`` (a settings entry) -> (pattern, digest)."""
    pattern, _, digest = pair.rpartition("=")
    return pattern, digest


def reserved_name_denied(settings: Settings, name: str, token: str | None) -> str | None:
    """The reason a registration of ``name`` with registration ``token`` is refused, if it is."""
    for pair in settings.reserve_name:
        pattern, digest = split_pair(pair)
        if matches([pattern], name.lower()) and not token_matches(token, digest):
            return "name reserved"
    return None


def publish_denied(
    settings: Settings, topics: Iterable[str], token: str | None, *, fat: bool, trusted: bool
) -> str | None:
    """The reason a publish of ``topics`` is refused, or None.

    A topic covered by a ``--topic-token`` pattern needs that token (or the global publish token);
    any other topic needs the global ``--publish-token`` when one is set. Without any token, a fat
    ping must come from a trusted network.
    """
    if token_matches(token, settings.publish_token):
        return None
    needs_global = settings.publish_token is not None
    for topic in topics:
        covering = [digest for pattern, digest in map(split_pair, settings.topic_token) if matches([pattern], topic)]
        if covering:
            if not any(token_matches(token, digest) for digest in covering):
                return "publish token required"
        elif needs_global:
            return "publish token required"
        elif fat and not trusted:
            return "fat pings are accepted only from trusted networks or with a publish token"
    return None


# Addresses --------------------------------------------------------------------------------------
def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]


def client_host(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def in_networks(host: str | None, networks: Sequence[Network]) -> bool:
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks)


def is_in_process(scope: Scope) -> bool:
    client = scope.get("client")
    return client is not None and tuple(client) == IN_PROCESS_CLIENT


# Bodies -----------------------------------------------------------------------------------------
class FormRefused(ValueError):
    """A form we had to read to decide on the request is one we will not read (too large, too many
    fields): refused outright, since the app would read what we could not check."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def is_form(scope: Scope) -> bool:
    content_type = Headers(scope=scope).get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == FORM_TYPE


async def peek_form(scope: Scope, receive: Receive, limit: int) -> tuple[Form, Receive]:
    """Read a body as a form without consuming it: the fields, and a ``receive`` that replays the body.

    The body is read once per request; a later middleware finds the fields in the scope. Raises
    :class:`FormRefused` past ``limit`` bytes (nothing is buffered beyond it) or ``MAX_FIELDS``.
    """
    cached: Form | None = scope.get(_FORM_KEY)
    if cached is not None:
        return cached, receive
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            # The client went away before sending its body: let the app see that.
            return [], _replay(b"", receive, first=message)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise FormRefused(413, f"form body larger than {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    try:
        fields = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:
        raise FormRefused(400, f"form with more than {MAX_FIELDS} fields") from None
    scope[_FORM_KEY] = fields
    return fields, _replay(body, receive)


def _replay(body: bytes, receive: Receive, first: Message | None = None) -> Receive:
    pending: list[Message] = [first or {"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def form_values(form: Form, key: str) -> list[str]:
    return [v for k, v in form if k == key]


def form_value(form: Form, key: str) -> str | None:
    """The *last* value, as the relay and the hub read a form (a dict, a multidict's ``get``):
    checking the first while the app acts on the last would let ``hub.mode=x&hub.mode=publish`` by."""
    values = form_values(form, key)
    return values[-1] if values else None


def ping_topics(form: Form) -> list[str]:
    """Topics of a publish ping: ``hub.url`` (PubSubHubbub 0.3/0.4), ``hub.url[]``, ``hub.topic``."""
    return [v for k, v in form if k in ("hub.url", "hub.url[]", "hub.topic")]


def publish_request(path: str, scope: Scope, form: Form | None) -> tuple[bool, list[str]] | None:
    """Whether a ``POST`` to ``/hub`` or ``/publish`` publishes, read as the hub reads it
    (``hub.endpoints``, ``hub.publish.parse``): (fat, topics), or None when it does not publish.

    ``form`` is the body read as a form: for ``/hub`` always (the hub reads any body as a form),
    for ``/publish`` only with a form Content-Type (else None: the body is content).
    """
    if path == "/hub":
        return (False, ping_topics(form or [])) if form_value(form or [], "hub.mode") == "publish" else None
    query_topics = query_values(scope, "hub.topic")
    if form is not None:
        keys = {k for k, _ in form}
        if form_value(form, "hub.mode") == "publish" or keys & {"hub.url", "hub.url[]"}:
            return False, ping_topics(form)
        if not query_topics and "hub.topic" in keys:
            return False, ping_topics(form)
    return True, query_topics


def query_values(scope: Scope, key: str) -> list[str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return [v for k, v in parse_qsl(raw, keep_blank_values=True) if k == key]


@dataclass(frozen=True)
class Denial:
    """A refusal at the edge: a 4xx with a short reason (and a challenge or Retry-After)."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = PlainTextResponse(self.reason + "\n", status_code=self.status, headers=self.headers)
        await response(scope, receive, send)


BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="reversehub"'}


# The middleware ---------------------------------------------------------------------------------
# Pages outside the dashboard that list registrations, subscriptions or deliveries: with an admin
# token they need it (as Bearer), like the dashboard itself.
LISTINGS = {("GET", "/reversehttp"), ("HEAD", "/reversehttp")}


class SecurityMiddleware:
    # reversehub.server.app.ReverseHub sends public URLs and request URLs (relay.routes.hot_route) past this
    # middleware: a rule for those paths belongs in the relay's endpoints or needs ReverseHub changed.
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.trusted = parse_networks(settings.trusted_networks)
        self.guard_publish = settings.publish_token is not None or bool(settings.topic_token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            denied, receive = await self._check(scope, receive)
        except FormRefused as exc:
            denied = Denial(exc.status, str(exc))
        if denied is not None:
            await denied(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope, receive: Receive) -> tuple[Denial | None, Receive]:
        method, path = scope["method"], scope["path"]
        if (method, path) in LISTINGS and self.settings.admin_token is not None:
            if not token_matches(presented_token(Headers(scope=scope)), self.settings.admin_token):
                return Denial(401, "admin token required", BEARER_CHALLENGE), receive
            return None, receive
        if method != "POST":
            return None, receive
        if path == "/reversehttp":
            return await self._registration(scope, receive)
        form: Form | None = None
        if path == "/hub" and self.guard_publish:
            form, receive = await peek_form(scope, receive, self.settings.max_form_size)
        elif path == "/publish":
            if is_form(scope):
                form, receive = await peek_form(scope, receive, self.settings.max_form_size)
        else:
            return None, receive
        request = publish_request(path, scope, form)
        if request is None:
            return None, receive
        fat, topics = request
        if not fat and not self.guard_publish:
            return None, receive  # hub.url pings are open: the hub fetches the content itself
        return self._publish_denied(scope, topics, fat=fat), receive

    async def _registration(self, scope: Scope, receive: Receive) -> tuple[Denial | None, Receive]:
        settings = self.settings
        if settings.registration_token is not None:
            token = presented_token(Headers(scope=scope))
            if not token_matches(token, settings.registration_token):
                challenge = {"WWW-Authenticate": 'Bearer realm="reversehub", Basic realm="reversehub"'}
                return Denial(401, "registration token required", challenge), receive
        if settings.reserve_name:
            # Whatever its Content-Type: the relay reads the body as a form.
            form, receive = await peek_form(scope, receive, settings.max_form_size)
            reason = reserved_name_denied(settings, form_value(form, "name") or "", form_value(form, "token"))
            if reason is not None:
                return Denial(403, reason), receive
        return None, receive

    def _publish_denied(self, scope: Scope, topics: list[str], *, fat: bool) -> Denial | None:
        token = presented_token(Headers(scope=scope))
        trusted = in_networks(client_host(scope), self.trusted)
        reason = publish_denied(self.settings, topics or [""], token, fat=fat, trusted=trusted)
        if reason is None:
            return None
        if reason.startswith("publish token"):
            return Denial(401, reason, BEARER_CHALLENGE)
        return Denial(403, reason)
