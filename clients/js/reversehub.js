// reversehub.js: a dependency-free ES module for browsers.
//
//   import { subscribe } from "/js/reversehub.js";
//   const sub = await subscribe("http://example.com/chat", (update) => console.log(update.text()),
//                               { hub: "http://127.0.0.1:8000/hub" });
//   ...
//   await sub.stop();
//
// A page cannot accept connections, so it claims a name on a ReverseHttp relay (Garnock-Jones,
// 2008-2009), long-polls for the requests that arrive there and answers them over fetch(); a
// Subscription gives that public URL to a WebSub hub as its callback. Same semantics as the Python
// client (clients.Subscriber): verification answered only for what we asked, X-Hub-Signature
// checked (WebCrypto; pages on insecure origins cannot use it and subscribe without a secret),
// duplicates dropped by webhook-id, 500 when the callback throws so the hub retries, lease renewal,
// re-registration when the relay lost the name, backoff after network errors.

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

// ---- Link headers (RFC 8288), possibly comma-joined -------------------------------------------

export function parseLinks(value, base) {
  const links = [];
  if (!value) return links;
  const re = /<([^>]*)>((?:\s*;\s*[^;,=\s]+(?:\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;,\s]*))?)*)/g;
  let m;
  while ((m = re.exec(value)) !== null) {
    const rels = new Set();
    const pre = /;\s*([^;,=\s]+)(?:\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;,\s]*)))?/g;
    let p;
    while ((p = pre.exec(m[2])) !== null) {
      if (p[1].toLowerCase() === "rel") {
        for (const r of (p[2] ?? p[3] ?? "").split(/\s+/)) if (r) rels.add(r.toLowerCase());
      }
    }
    links.push({ url: new URL(m[1].trim(), base).href, rels });
  }
  return links;
}

export function findLink(value, rel, base) {
  const link = parseLinks(value, base).find((l) => l.rels.has(rel));
  return link ? link.url : null;
}

// ---- message/http --------------------------------------------------------------------------

function indexOfCRLFCRLF(bytes) {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) return i;
  }
  return -1;
}

function dechunk(bytes) {
  const parts = [];
  let pos = 0;
  for (;;) {
    let eol = pos;
    while (eol + 1 < bytes.length && !(bytes[eol] === 13 && bytes[eol + 1] === 10)) eol++;
    const size = parseInt(latin1.decode(bytes.subarray(pos, eol)).split(";")[0], 16);
    if (!(size > 0)) break;
    parts.push(bytes.subarray(eol + 2, eol + 2 + size));
    pos = eol + 2 + size + 2;
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/** Parse one message/http request: {method, target, version, headers: Headers, body: Uint8Array}. */
export function parseRequest(bytes) {
  const end = indexOfCRLFCRLF(bytes);
  if (end < 0) throw new Error("message/http: no end of headers");
  const lines = latin1.decode(bytes.subarray(0, end)).split("\r\n");
  const [method, target, proto] = lines[0].split(" ");
  if (!method || !target || !/^HTTP\/\d\.\d$/.test(proto || "")) throw new Error("message/http: bad request line");
  const headers = new Headers();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  let body = bytes.subarray(end + 4);
  if ((headers.get("transfer-encoding") || "").toLowerCase().includes("chunked")) body = dechunk(body);
  else if (headers.has("content-length")) body = body.subarray(0, parseInt(headers.get("content-length"), 10));
  return { method, target, version: proto.slice(5), headers, body, text: () => new TextDecoder().decode(body) };
}

const REASONS = { 200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 404: "Not Found",
  405: "Method Not Allowed", 500: "Internal Server Error" };

/** Serialize a response {status, headers: [[k, v]] | object, body: string | Uint8Array} as message/http. */
export function serializeResponse({ status = 200, headers = [], body = "" }) {
  const data = typeof body === "string" ? encoder.encode(body) : body;
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers);
  let head = `HTTP/1.1 ${status} ${REASONS[status] || "Status"}\r\n`;
  for (const [k, v] of pairs) {
    if (!/^(content-length|transfer-encoding|connection)$/i.test(k)) head += `${k}: ${v}\r\n`;
  }
  head += `Content-Length: ${data.length}\r\n\r\n`;
  const out = new Uint8Array(head.length + data.length);
  for (let i = 0; i < head.length; i++) out[i] = head.charCodeAt(i) & 0xff;
  out.set(data, head.length);
  return out;
}

// ---- helpers ---------------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const jitter = (ms) => ms * (0.5 + Math.random() / 2);
function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- Endpoint: claim a name, poll, answer -------------------------------------------------------

/**
 * Serve `handler(request) -> {status, headers, body}` (sync or async) on a relay name.
 * Options: name, token, lease, pollers (2), onState(state), onReregistered(), backoff [minMs, maxMs],
 * onReplied(request, accepted): called once the reply to `request` was POSTed to the relay;
 * `accepted` is true when the relay took it (2xx, ReverseHttp "Replying": 202) and passes it on,
 * false when the POST failed or was refused (the requester then gets 504 from the relay instead).
 */
export class Endpoint {
  constructor(relay, handler, options = {}) {
    this.relay = new URL(relay, globalThis.location?.href).href;
    this.handler = handler;
    this.name = options.name || `js-${randomHex(8)}`;
    this.token = options.token || randomHex(24);
    this.lease = options.lease;
    this.pollers = options.pollers || 2;
    this.onState = options.onState || (() => {});
    this.onReregistered = options.onReregistered || null;
    this.onReplied = options.onReplied || null;
    this.backoff = options.backoff || [100, 30000];
    this.publicUrl = null;
    this.state = "new";
    this._privateUrl = null;
    this._abort = new AbortController();
    this._closing = false;
    this._generation = 0;
    this._recovering = null;
    this._loops = [];
  }

  _setState(state) {
    this.state = state;
    try { this.onState(state); } catch (e) { console.error(e); }
  }

  async _register() {
    const form = new URLSearchParams({ name: this.name, token: this.token });
    if (this.lease) form.set("lease", String(this.lease));
    const r = await fetch(this.relay, { method: "POST", body: form, signal: this._abort.signal });
    if (r.status === 403) throw new Error(`relay name ${this.name} is held by someone else`);
    if (!r.ok) throw new Error(`relay refused ${this.name}: HTTP ${r.status}`);
    const links = r.headers.get("link");
    const first = findLink(links, "first", r.url);
    const related = findLink(links, "related", r.url);
    const loc = r.headers.get("location");
    if (!first || !related || !loc) throw new Error("relay answered without Link rel=first/related and Location");
    this.publicUrl = related;
    this._privateUrl = new URL(loc, r.url).href;
    return first;
  }

  async _registerUntilDone() {
    let delay = this.backoff[0];
    while (!this._closing) {
      try { return await this._register(); } catch (e) {
        if (this._closing) break;
        this._setState("reconnecting");
        await sleep(jitter(delay));
        delay = Math.min(delay * 2, this.backoff[1]);
      }
    }
    return null;
  }

  /** Register and start polling; resolves to the public URL. */
  async start() {
    const first = await this._register();
    this._setState("registered");
    for (let i = 0; i < this.pollers; i++) this._loops.push(this._poll(i === 0 ? first : null));
    return this.publicUrl;
  }

  async _recover(generation) {
    // The first poller to see 404/410 re-registers and tells the owner; the others just get a URL.
    const url = await this._registerUntilDone();
    if (url && generation === this._generation) {
      this._generation++;
      this._setState("reregistered");
      if (this.onReregistered) Promise.resolve().then(this.onReregistered).catch((e) => console.error(e));
    }
    return url;
  }

  async _poll(url) {
    let generation = this._generation;
    if (!url) url = await this._registerUntilDone();
    let delay = this.backoff[0];
    let connected = true;
    while (url && !this._closing) {
      let r;
      try {
        r = await fetch(url, { headers: { accept: "message/http" }, signal: this._abort.signal, cache: "no-store" });
      } catch (e) {
        if (this._closing) return;
        if (connected) this._setState("reconnecting");
        connected = false;
        await sleep(jitter(delay));
        delay = Math.min(delay * 2, this.backoff[1]);
        continue;
      }
      if (r.status === 404 || r.status === 410) {
        if (this._closing) return;
        const seen = generation;
        url = await this._recover(seen);
        generation = this._generation;
        continue;
      }
      if (r.status !== 200 && r.status !== 204) {
        if (connected) this._setState("reconnecting");
        connected = false;
        await sleep(jitter(delay));
        delay = Math.min(delay * 2, this.backoff[1]);
        continue;
      }
      if (!connected) { connected = true; this._setState("connected"); }
      delay = this.backoff[0];
      const next = findLink(r.headers.get("link"), "next", url) || url;
      if (r.status === 200) {
        let reply;
        let request = null;
        try {
          request = parseRequest(new Uint8Array(await r.arrayBuffer()));
          reply = serializeResponse(await this.handler(request));
        } catch (e) {
          console.error("reversehub handler failed", e);
          reply = serializeResponse({ status: 500, body: "Internal Server Error\n" });
        }
        let accepted = false;
        try {
          const answer = await fetch(url, { method: "POST", body: reply, headers: { "content-type": "message/http" } });
          accepted = answer.ok;
          if (!accepted) console.warn(`reversehub: the relay refused the reply: HTTP ${answer.status}`);
        } catch (e) {
          console.warn("reversehub: could not post the reply", e);
        }
        if (request && this.onReplied) {
          try { this.onReplied(request, accepted); } catch (e) { console.error(e); }
        }
      }
      url = next;
    }
  }

  /**
   * Stop polling. With `release` (the default) the name is relinquished; without it the name stays
   * registered until its lease ends, so that an Endpoint started again with the same name and
   * token gets the same public URL back (requests meanwhile get 504 from the relay).
   */
  async stop({ release = true } = {}) {
    if (this._closing) return;
    this._closing = true;
    this._abort.abort();
    await Promise.allSettled(this._loops);
    if (release && this._privateUrl) {
      try { await fetch(this._privateUrl, { method: "DELETE" }); } catch (e) { /* best effort */ }
    }
    this._setState("closed");
  }
}

// ---- WebSub discovery -------------------------------------------------------------------------

/** Find a topic's hub: Link rel="hub" header, else <link rel="hub"> in HTML/Atom/RSS. */
export async function discover(topic) {
  const r = await fetch(topic);
  if (!r.ok) throw new Error(`could not fetch ${topic}: HTTP ${r.status}`);
  const header = r.headers.get("link");
  let hub = findLink(header, "hub", r.url);
  let self = findLink(header, "self", r.url);
  if (!hub) {
    const type = (r.headers.get("content-type") || "").includes("html") ? "text/html" : "application/xml";
    const doc = new DOMParser().parseFromString(await r.text(), type);
    for (const el of doc.getElementsByTagName("*")) {
      if (el.localName !== "link" || !el.getAttribute("href")) continue;
      const rels = (el.getAttribute("rel") || "").toLowerCase().split(/\s+/);
      const href = new URL(el.getAttribute("href"), r.url).href;
      if (!hub && rels.includes("hub")) hub = href;
      if (!self && rels.includes("self")) self = href;
    }
  }
  if (!hub) throw new Error(`${topic} names no hub`);
  return { hub, topic: self || r.url };
}

// ---- signatures and proofs -------------------------------------------------------------------

const ALGORITHMS = { sha1: "SHA-1", sha256: "SHA-256", sha384: "SHA-384", sha512: "SHA-512" };

async function hmacHex(secret, algorithm, data) {
  const key = await crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: algorithm },
    false, ["sign"]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, data));
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function signatureOk(secret, header, body) {
  if (!header) return false;
  const eq = header.indexOf("=");
  const algorithm = ALGORITHMS[header.slice(0, eq).trim().toLowerCase()];
  if (!algorithm) return false;
  const expected = await hmacHex(secret, algorithm, body);
  const given = header.slice(eq + 1).trim().toLowerCase();
  let diff = expected.length ^ given.length;
  for (let i = 0; i < expected.length; i++) diff |= expected.charCodeAt(i) ^ given.charCodeAt(i);
  return diff === 0;
}

/** `/hub/status` or `/hub/replay` beside the hub endpoint (`https://h/hub` -> `https://h/hub/status`). */
function hubAction(hub, action) {
  const url = new URL(hub);
  url.search = "";
  url.hash = "";
  url.pathname = url.pathname.replace(/\/?$/, `/${action}`);
  return url;
}

function text(status, body = "") {
  return { status, headers: [["content-type", "text/plain"]], body };
}

// ---- durable state -----------------------------------------------------------------------------

const STATE_VERSION = 1;

/**
 * What a durable subscription needs to resume, as one JSON object under `key` in a Web Storage
 * (localStorage unless told otherwise). The field names are the Python client's state file's.
 */
class SavedState {
  constructor(storage, key) {
    if (!storage) throw new Error("reversehub: a durable subscription needs localStorage (or the storage option)");
    this.storage = storage;
    this.key = key;
    this.kept = {};
  }

  load() {
    this.kept = {};
    const raw = this.storage.getItem(this.key);
    if (raw === null) return null;
    let value = null;
    try { value = JSON.parse(raw); } catch (e) { /* not ours: refused below */ }
    // Never overwrite what the application keeps under the same key.
    if (!value || value.version !== STATE_VERSION) {
      throw new Error(`reversehub: storage key "${this.key}" holds something other than a subscription's state`);
    }
    this.kept = value; // fields a newer writer added stay as they are
    return value;
  }

  save(value) {
    try {
      this.storage.setItem(this.key, JSON.stringify({ ...this.kept, version: STATE_VERSION, ...value }));
    } catch (e) {
      console.error(`reversehub: could not save the subscription state "${this.key}"`, e);
    }
  }

  clear() {
    this.storage.removeItem(this.key);
  }
}

/**
 * Hold the Web Lock `name` until the returned function is called. Two tabs resuming one state
 * would claim the same relay name and split its requests between them, each seeing half of the
 * updates and its own idea of the last one handled.
 */
async function exclusive(name, timeoutMs) {
  const locks = globalThis.navigator?.locks;
  if (!locks) return () => {};
  let release;
  const held = new Promise((resolve) => { release = resolve; });
  await new Promise((acquired, failed) => {
    locks.request(name, { signal: AbortSignal.timeout(timeoutMs) }, () => { acquired(); return held; }).catch(failed);
  });
  return release;
}

// ---- Subscription ------------------------------------------------------------------------------

const MAX_HELD = 1000; // updates held ahead of a gap; past it, the hub is told to retry later
const GAP_WAIT_MAX = 30000; // ms: the longest wait between two questions to the hub about a gap

function sequenceOf(headers) {
  const value = headers.get("x-hub-sequence");
  return value && /^\d{1,15}$/.test(value) ? Number(value) : null;
}

/**
 * A WebSub subscription over a relay name. `callback(update)` gets
 * {topic, id, seq, contentType, headers, body: Uint8Array, text(), json()}.
 * Options: hub (else discovered), relay (else the hub's server), secret, leaseSeconds,
 * onState(state), verifyTimeout (ms, 30000), renewFraction (0.8), pollers, backoff;
 * durable subscriptions (docs/browser.md): state (a storage key), storage (localStorage),
 * onGap(first, last), gapWait (ms, 2000), lockTimeout (ms, 10000).
 */
export class Subscription {
  constructor(topic, callback, options = {}) {
    this.topic = topic;
    this._requested = topic; // as the application names it; discovery may find another (rel="self")
    this.callback = callback;
    this.hub = options.hub ? new URL(options.hub, globalThis.location?.href).href : null;
    this.relay = options.relay || null;
    this.stateKey = options.state || null;
    this.useSignature = Boolean(globalThis.crypto && crypto.subtle);
    if (this.stateKey && !this.useSignature) {
      // Replays and status need a proof keyed with hub.secret; without them gaps could not be filled.
      throw new Error("reversehub: a durable subscription needs WebCrypto (a secure context: https or localhost)");
    }
    if (!this.useSignature) console.warn("reversehub: no WebCrypto on this origin; subscribing without hub.secret");
    this.secret = this.useSignature ? options.secret || randomHex(32) : null;
    this.leaseSeconds = options.leaseSeconds || null;
    this.grantedLease = null;
    this.onState = options.onState || (() => {});
    this.onGap = options.onGap || null;
    this.verifyTimeout = options.verifyTimeout || 30000;
    this.renewFraction = options.renewFraction || 0.8;
    this.lockTimeout = options.lockTimeout || 10000;
    this.gapWait = options.gapWait || 2000;
    this.options = options;
    this.state = "new";
    this.callbackUrl = null;
    this.lastSeq = 0; // durable: the last X-Hub-Sequence the callback handled
    this._saved = this.stateKey ? new SavedState(options.storage || globalThis.localStorage, this.stateKey) : null;
    this._pending = new Map();
    this._echoing = new Map(); // challenge -> {pending, lease}: echoed, waiting for the relay's 202
    this._seen = new Set();
    this._queue = Promise.resolve();
    this._renewTimer = null;
    this._closed = false;
    this._known = 0; // the highest sequence number the hub is known to have given out to us
    this._held = new Map(); // seq -> update: acknowledged ahead of a gap, passed on once it is filled
    this._arrivals = []; // resolvers woken by every delivery
    this._filling = null;
    this._replayTop = null; // this gap's replay covered up to here (the hub's last_seq when asked)
    this._leaseExpiresAt = null;
    this._clockOffset = 0; // s the hub's clock is ahead of ours (its Date header): proofs use its time
    this._lastProof = 0;
    this._unlock = () => {};
  }

  get durable() {
    return this._saved !== null;
  }

  _setState(state) {
    this.state = state;
    try { this.onState(state); } catch (e) { console.error(e); }
  }

  _save() {
    this._saved.save({
      hub: this.hub, topic: this.topic, requested_topic: this._requested, relay: this._relayUrl,
      name: this.endpoint.name, token: this.endpoint.token, secret: this.secret, callback: this.callbackUrl,
      last_seq: this.lastSeq, lease_seconds: this.grantedLease, lease_expires_at: this._leaseExpiresAt,
    });
  }

  async start() {
    const resumed = this.durable ? await this._restore() : null;
    if (!this.hub) {
      this._setState("discovering");
      try {
        const found = await discover(this.topic);
        this.hub = found.hub;
        this.topic = found.topic;
      } catch (e) {
        this._unlock();
        throw e;
      }
    }
    this._relayUrl = this.relay || resumed?.relay || new URL("reversehttp", this.hub).href;
    this.endpoint = new Endpoint(this._relayUrl, (req) => this._onRequest(req), {
      name: resumed?.name || `js-${randomHex(8)}`,
      token: resumed?.token || randomHex(24),
      pollers: this.options.pollers || 2,
      backoff: this.options.backoff,
      onState: (s) => { if (s === "connected" || s === "reconnecting") this._setState(s); },
      onReregistered: () => this._resubscribe(),
      onReplied: (request, accepted) => this._onReplied(request, accepted),
    });
    let publicUrl;
    try {
      if (resumed) {
        // Before the name is polled again, so that nothing arrives before we know where we are.
        await this._resumeCheck();
      } else if (this.durable) {
        // Saved before the hub can know the name: a page closed right after the hub verified
        // comes back to the same name, callback and subscription instead of orphaning them.
        this._save();
      }
      publicUrl = await this.endpoint.start();
    } catch (e) {
      this._unlock();
      throw e;
    }
    const callbackUrl = new URL("websub", publicUrl).href;
    if (this.callbackUrl && this.callbackUrl !== callbackUrl) {
      console.warn("reversehub: the relay gave the saved name another URL; subscribing it anew");
      this.lastSeq = 0;
      this._known = 0;
    }
    this.callbackUrl = callbackUrl;
    this._setState("subscribing");
    try {
      await this._subscribe("subscribe");
    } catch (e) {
      // A resumed subscription may still be the hub's: keep its name and state to try again.
      await this.endpoint.stop({ release: !resumed });
      if (this.durable && !resumed) this._saved.clear();
      this._unlock();
      throw e;
    }
    if (this.durable) this._save();
    this._setState("subscribed");
    this._fillGap();
    return this;
  }

  /** The saved state of a durable subscription (null: none yet), under its lock. */
  async _restore() {
    try {
      this._unlock = await exclusive(`reversehub:${this.stateKey}`, this.lockTimeout);
    } catch (e) {
      throw new Error(`reversehub: subscription state "${this.stateKey}" is in use by another tab or window`);
    }
    let saved;
    try {
      saved = this._saved.load();
      if (saved && saved.topic !== this.topic && saved.requested_topic !== this.topic) {
        throw new Error(`reversehub: state "${this.stateKey}" is a subscription to ${saved.topic}, not ${this.topic}`);
      }
      if (saved && this.hub && saved.hub !== this.hub) {
        throw new Error(`reversehub: state "${this.stateKey}" is a subscription at ${saved.hub}, not ${this.hub}`);
      }
      if (saved && this.options.secret && saved.secret !== this.options.secret) {
        throw new Error(`reversehub: state "${this.stateKey}" holds another hub.secret than the one given`);
      }
    } catch (e) {
      this._unlock();
      throw e;
    }
    if (!saved) return null;
    this.hub = saved.hub;
    this.topic = saved.topic;
    this._requested = saved.requested_topic || this._requested;
    this.secret = saved.secret;
    this.callbackUrl = saved.callback || null;
    this.lastSeq = saved.last_seq || 0;
    this.grantedLease = saved.lease_seconds ?? null;
    this._leaseExpiresAt = saved.lease_expires_at ?? null;
    return saved;
  }

  /**
   * Where the hub stands for a resumed subscription, asked before its name is polled again so
   * that no delivery is judged against a numbering that is no longer the hub's. What the hub cannot
   * account for is reported (onGap); what it kept but will not send by itself is replayed once
   * subscribed.
   */
  async _resumeCheck() {
    if (!this.callbackUrl) return; // closed before its first verification: nothing to resume
    let status;
    try {
      status = await this._status();
    } catch (e) {
      if (e.status !== 403) {
        console.warn(`reversehub: the hub cannot tell what was published meanwhile (${e.message}); resuming`);
        return;
      }
      // The hub no longer knows the subscription (removed): the one made now numbers its
      // updates from 1 again, which must not pass for duplicates, and how many were published
      // in between nobody can say.
      await this._reportGap(this.lastSeq + 1, null, "the hub no longer knows this subscription");
      this.lastSeq = 0;
      return;
    }
    if (status.last_seq < this.lastSeq) {
      // Numbered anew (the subscription was removed and made again): what is pending is new to us.
      console.warn("reversehub: the hub numbers this subscription below the saved last_seq; following it");
      this.lastSeq = Math.max(0, status.last_seq - status.pending);
    }
    if (status.state !== "active" || (status.expires_at && status.expires_at <= Date.now() / 1000)) {
      // The hub queues nothing for an ended subscription, so it cannot say how many were missed.
      await this._reportGap(this.lastSeq + 1, null, "the subscription's lease ran out while the page was away");
    }
    // Known to exist even when none of them is on its way (the tail of a gap): asked for once subscribed.
    this._known = Math.max(this._known, status.last_seq);
    await this._account(status);
  }

  async _subscribe(mode) {
    let timer;
    let pending;
    const verified = new Promise((resolve, reject) => {
      pending = { resolve, reject };
      this._pending.set(mode, pending);
      timer = setTimeout(() => reject(new Error(`hub did not verify the ${mode} in time`)), this.verifyTimeout);
    });
    verified.catch(() => {});
    try {
      const form = new URLSearchParams({ "hub.mode": mode, "hub.topic": this.topic, "hub.callback": this.callbackUrl });
      if (mode === "subscribe" && this.secret) form.set("hub.secret", this.secret);
      if (mode === "subscribe" && this.leaseSeconds) form.set("hub.lease_seconds", String(this.leaseSeconds));
      const r = await fetch(this.hub, { method: "POST", body: form });
      if (!r.ok) throw new Error(`hub refused to ${mode}: HTTP ${r.status} ${(await r.text()).slice(0, 200)}`);
      const lease = await verified;
      if (mode === "subscribe") this._scheduleRenewal(lease);
    } finally {
      clearTimeout(timer);
      this._pending.delete(mode);
      for (const [challenge, echo] of this._echoing) if (echo.pending === pending) this._echoing.delete(challenge);
    }
  }

  _scheduleRenewal(lease) {
    this.grantedLease = lease;
    this._leaseExpiresAt = lease ? Date.now() / 1000 + lease : null;
    clearTimeout(this._renewTimer);
    if (lease && !this._closed) {
      this._renewTimer = setTimeout(() => this._resubscribe(), lease * 1000 * this.renewFraction);
    }
  }

  async _resubscribe() {
    if (this.endpoint.publicUrl) this.callbackUrl = new URL("websub", this.endpoint.publicUrl).href;
    let delay = 100;
    while (!this._closed) {
      try {
        await this._subscribe("subscribe");
        this._setState("subscribed");
        return;
      } catch (e) {
        this._setState("reconnecting");
        await sleep(jitter(delay));
        delay = Math.min(delay * 2, 30000);
      }
    }
  }

  async _onRequest(request) {
    const url = new URL(request.target, this.callbackUrl);
    if (url.pathname !== new URL(this.callbackUrl).pathname) return text(404, "Not Found\n");
    if (request.method === "GET") return this._verify(url.searchParams);
    if (request.method === "POST") return this._serially(() => this._deliverNow(request));
    return text(405, "Method Not Allowed\n");
  }

  _verify(params) {
    const mode = params.get("hub.mode");
    if (params.get("hub.topic") !== this.topic) return text(404, "unknown topic\n");
    if (mode === "denied") {
      const pending = this._pending.get("subscribe");
      if (pending) pending.reject(new Error(`hub denied the subscription: ${params.get("hub.reason") || ""}`));
      else this._setState("denied");
      return text(200);
    }
    const pending = this._pending.get(mode);
    const challenge = params.get("hub.challenge");
    // Only what we asked for: echoing every challenge would let anyone subscribe us to anything.
    if (!pending || !challenge) return text(404, "no such pending request\n");
    const lease = parseInt(params.get("hub.lease_seconds") || "", 10);
    // Not verified yet: only once the relay took this echo can the hub have it (_onReplied).
    this._echoing.set(challenge, { pending, lease: Number.isFinite(lease) ? lease : null });
    return text(200, challenge);
  }

  _onReplied(request, accepted) {
    if (request.method !== "GET") return;
    const url = new URL(request.target, this.callbackUrl);
    if (url.pathname !== new URL(this.callbackUrl).pathname) return;
    const challenge = url.searchParams.get("hub.challenge");
    const echo = this._echoing.get(challenge);
    if (!echo) return;
    this._echoing.delete(challenge);
    if (accepted) echo.pending.resolve(echo.lease);
    else echo.pending.reject(new Error("the hub's verification came, but the relay did not take our answer to it " +
      "(so the hub may never store the subscription): not subscribed"));
  }

  /** Run `fn` after everything queued before it: one callback at a time, in arrival order. */
  _serially(fn) {
    const result = this._queue.then(fn);
    this._queue = result.catch(() => {});
    return result;
  }

  async _deliverNow(request) {
    if (this.secret && !(await signatureOk(this.secret, request.headers.get("x-hub-signature"), request.body))) {
      console.warn("reversehub: ignored a delivery with a missing or wrong X-Hub-Signature");
      return text(202);
    }
    const id = request.headers.get("webhook-id");
    if (id && this._seen.has(id)) return text(204);
    const body = request.body;
    const seq = sequenceOf(request.headers);
    const update = {
      topic: findLink(request.headers.get("link"), "self", this.topic) || this.topic,
      id,
      seq,
      contentType: request.headers.get("content-type") || "",
      headers: request.headers,
      body,
      text: () => new TextDecoder().decode(body),
      json: () => JSON.parse(new TextDecoder().decode(body)),
    };
    if (this.durable && seq !== null) return this._inOrder(update);
    try {
      await this.callback(update);
    } catch (e) {
      console.error("reversehub: callback failed; the hub will retry", e);
      return text(500, "callback failed\n");
    }
    this._remember(id);
    return text(204);
  }

  _remember(id) {
    if (!id) return;
    this._seen.add(id);
    if (this._seen.size > 10000) this._seen.delete(this._seen.values().next().value);
  }

  /** A durable subscription's delivery: passed on in X-Hub-Sequence order, each once. */
  async _inOrder(update) {
    const seq = update.seq;
    this._known = Math.max(this._known, seq);
    this._arrived();
    // Already handled, or already held: acknowledged, not passed on again.
    if (seq <= this.lastSeq || this._held.has(seq)) return text(204);
    if (seq > this.lastSeq + 1) {
      // An earlier update is missing (the hub gave it up, or our state is older than its
      // outbox): hold this one and have the missing ones replayed. Held updates are
      // acknowledged, so the hub's next attempt is the next update, not this one again.
      if (this._held.size >= MAX_HELD) return text(503, "too many updates held for order\n");
      this._held.set(seq, update);
      this._fillGap();
      return text(204);
    }
    try {
      await this.callback(update);
    } catch (e) {
      console.error("reversehub: callback failed; the hub will retry", e);
      return text(500, "callback failed\n");
    }
    this._advance(seq, update.id);
    if (this._held.size) this._serially(() => this._drainHeld());
    return text(204);
  }

  /** The callback handled `seq`: saved before the hub hears so, so a restart never repeats it. */
  _advance(seq, id = null) {
    this.lastSeq = seq;
    this._remember(id);
    this._save();
    this._arrived();
  }

  _arrived() {
    const waiting = this._arrivals;
    this._arrivals = [];
    for (const wake of waiting) wake(true);
  }

  async _drainHeld() {
    while (this._held.has(this.lastSeq + 1)) {
      const seq = this.lastSeq + 1;
      const update = this._held.get(seq);
      this._held.delete(seq);
      try {
        await this.callback(update);
      } catch (e) {
        // The hub counts it delivered: only a replay brings it back.
        console.error("reversehub: callback failed on a held update; asking the hub to send it again", e);
        this._replayTop = null;
        this._fillGap();
        return;
      }
      this._advance(seq, update.id);
    }
  }

  /**
   * Apply what /hub/status says, in delivery order (through _serially). Lost, reported to onGap
   * and skipped: what lies below the oldest delivery the hub still holds (pruned), and, once a
   * replay was asked for this gap and the hub has nothing pending, what that replay covered and
   * still did not bring (skipped or pruned: everything it kept has reached us).
   */
  async _account(status) {
    if (status.pending === 0) this._known = Math.max(this._known, status.last_seq);
    const oldest = status.oldest_retained_seq;
    // Pending deliveries are always retained: nothing retained means everything sent is gone.
    let lost = oldest === null || oldest === undefined ? status.last_seq : oldest - 1;
    if (status.pending === 0 && this._replayTop !== null) lost = Math.max(lost, this._replayTop);
    if (this._held.size) lost = Math.min(lost, Math.min(...this._held.keys()) - 1);
    if (lost <= this.lastSeq) return;
    const first = this.lastSeq + 1;
    this._advance(lost);
    await this._reportGap(first, lost);
    await this._drainHeld();
  }

  /** Tell the application of updates it will never get: onGap(first, last), or a warning. */
  async _reportGap(first, last, reason = "the hub no longer holds them") {
    const range = last === null ? `${first} and after (how many is unknown)` : `${first}..${last}`;
    if (!this.onGap) {
      console.warn(`reversehub: updates ${range} of ${this.topic} are lost: ${reason}`);
      return;
    }
    try { await this.onGap(first, last); } catch (e) { console.error("reversehub: onGap failed", e); }
  }

  _gapOpen() {
    return this._held.size > 0 || this._known > this.lastSeq;
  }

  /**
   * Fill the gap after lastSeq: one replay after lastSeq per gap, then ask the hub until it has
   * nothing pending; what is then still missing is reported (_account). The hub sends a
   * subscription's deliveries one at a time in order, so a number that jumps means the ones in
   * between are not on their way by themselves.
   */
  _fillGap() {
    if (this._filling || this._closed || !this._gapOpen()) return;
    this._filling = (async () => {
      let wait = this.gapWait;
      while (!this._closed && this._gapOpen()) {
        try {
          const status = await this._status();
          await this._serially(() => this._account(status));
          if (!this._gapOpen()) break;
          if (this._replayTop === null || this.lastSeq >= this._replayTop) {
            this._replayTop = status.last_seq;
            await this._replay(this.lastSeq);
            await this._quiet(this.gapWait);
          } else {
            // Replayed, and the hub still has some pending (or in its backoff): not lost, ask later.
            await this._quiet(wait);
            wait = Math.min(wait * 2, GAP_WAIT_MAX);
          }
        } catch (e) {
          if (this._closed) break;
          console.warn(`reversehub: could not ask the hub about missing updates (${e.message}); trying again`);
          await this._quiet(Math.max(wait, (e.retryAfter || 0) * 1000));
          wait = Math.min(wait * 2, GAP_WAIT_MAX);
        }
      }
      this._replayTop = null;
    })().finally(() => { this._filling = null; });
  }

  /** Wait until no delivery arrived for `ms` (or the gap closed, or the subscription stopped). */
  async _quiet(ms) {
    while (!this._closed && this._gapOpen()) {
      const arrived = await new Promise((resolve) => {
        const wake = (value) => { clearTimeout(timer); resolve(value); };
        const timer = setTimeout(() => {
          this._arrivals = this._arrivals.filter((w) => w !== wake);
          resolve(false);
        }, ms);
        this._arrivals.push(wake);
      });
      if (!arrived) return;
    }
  }

  /**
   * A fetch to /hub/status or /hub/replay with a proof of ownership (hub/signing.py): hex
   * HMAC-SHA256(secret, "action\ncallback\ntopic\ntimestamp[\nparam]"). A proof is accepted
   * once and within five minutes of the hub's clock, so the timestamp follows the hub's Date header.
   */
  async _proved(action, params = []) {
    const timestamp = Math.max(Math.floor(Date.now() / 1000 + this._clockOffset), this._lastProof + 1);
    this._lastProof = timestamp;
    const message = [action, this.callbackUrl, this.topic, String(timestamp), ...params].join("\n");
    return { timestamp: String(timestamp), proof: await hmacHex(this.secret, "SHA-256", encoder.encode(message)) };
  }

  async _hubFetch(url, init = {}) {
    const r = await fetch(url, { cache: "no-store", ...init });
    const date = Date.parse(r.headers.get("date") || "");
    if (Number.isFinite(date)) this._clockOffset = Math.round((date - Date.now()) / 1000);
    if (!r.ok) {
      const error = new Error(`${url.pathname}: HTTP ${r.status} ${(await r.text()).trim().slice(0, 200)}`);
      error.status = r.status;
      error.retryAfter = parseInt(r.headers.get("retry-after") || "", 10) || null;
      throw error;
    }
    return r;
  }

  /** The hub's `/hub/status` for this subscription: {last_seq, pending, oldest_retained_seq, ...}. */
  async _status() {
    for (let attempt = 0; ; attempt++) {
      const { timestamp, proof } = await this._proved("status");
      const url = hubAction(this.hub, "status");
      url.search = new URLSearchParams({
        "hub.callback": this.callbackUrl, "hub.topic": this.topic, "hub.timestamp": timestamp, "hub.signature": proof,
      }).toString();
      try {
        return await (await this._hubFetch(url)).json();
      } catch (e) {
        // A 403 may be a proof made on a clock far from the hub's (now corrected from its Date
        // header) or one already used (a page reloaded within the second signs the same values):
        // only a second 403, on a fresh timestamp, says the hub does not know the subscription.
        if (e.status === 403 && attempt === 0) continue;
        throw e;
      }
    }
  }

  /** Ask the hub to send again every update it holds after `since`; resolves to how many it queued. */
  async _replay(since) {
    const { timestamp, proof } = await this._proved("replay", [String(since)]);
    const form = new URLSearchParams({
      "hub.callback": this.callbackUrl, "hub.topic": this.topic, "hub.since": String(since),
      "hub.timestamp": timestamp, "hub.signature": proof,
    });
    return (await (await this._hubFetch(hubAction(this.hub, "replay"), { method: "POST", body: form })).json()).queued;
  }

  /**
   * A durable subscription detaches: the relay name, the hub's subscription and the state stay,
   * the hub keeps queueing, and a page started again with the same state receives what it missed.
   * Any other subscription unsubscribes (unsubscribe()).
   */
  async stop() {
    if (!this.durable) return this.unsubscribe();
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._renewTimer);
    await this.endpoint.stop({ release: false });
    this._unlock();
    this._setState("stopped");
  }

  /**
   * End the subscription at the hub, relinquish the relay name, and clear a durable
   * subscription's state. A durable subscription whose unsubscribe the hub did not verify stays
   * as stop() leaves it, and this rejects: start it again with the same state to try once more.
   */
  async unsubscribe() {
    if (this._closed) {
      if (this.durable) throw new Error("reversehub: stopped; start it again with the same state to unsubscribe");
      return;
    }
    this._closed = true;
    clearTimeout(this._renewTimer);
    try {
      await this._subscribe("unsubscribe");
    } catch (e) {
      if (this.durable) {
        await this.endpoint.stop({ release: false });
        this._unlock();
        this._setState("stopped");
        throw e;
      }
      console.warn("reversehub: unsubscribe failed", e);
    }
    await this.endpoint.stop();
    if (this.durable) this._saved.clear();
    this._unlock();
    this._setState("stopped");
  }
}

/**
 * Subscribe and resolve once the hub verified: `const sub = await subscribe(topic, cb, {hub})`.
 * Verified means the hub's challenge arrived and the relay took our echo of it (202), which it
 * passes on to the hub. Rejects when the hub refused, denied or did not verify in time, or when
 * the echo did not reach the relay (then nothing was subscribed and subscribing again is safe).
 * Renewals and re-subscriptions after the relay lost the name retry with backoff instead.
 * With `state: KEY` the subscription is durable (docs/browser.md): a page opened again with the
 * same key resumes it and receives what was published meanwhile, in order, each once.
 */
export async function subscribe(topic, callback, options = {}) {
  return new Subscription(topic, callback, options).start();
}
