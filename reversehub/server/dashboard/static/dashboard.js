// reversehub dashboard: live charts from a server-sent event stream, tables from the JSON API.
// No dependencies. Everything shown comes from the network, so it is written with textContent only.
//
// The session id lives in sessionStorage (isolated by origin, ports included) and goes out only as an
// Authorization header: no cookie, so nothing the browser attaches by itself (to a page from another
// origin, a relayed application's included) authenticates anything.
"use strict";

const SESSION = "reversehub.session";
const POINTS = 120;
const SERIES = ["publishes", "deliveries", "relay_requests", "relay_latency_ms"];
const history = Object.fromEntries(SERIES.map((k) => [k, []]));

function session() { return window.sessionStorage.getItem(SESSION); }

function signedOut() {
  window.sessionStorage.removeItem(SESSION);
  window.location.replace("/dashboard/login");
}

async function api(url, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: "Bearer " + session() };
  const r = await fetch(url, { ...options, headers, credentials: "omit", cache: "no-store" });
  if (r.status === 401) signedOut();
  return r;
}

function draw(key) {
  const canvas = document.getElementById("chart-" + key);
  const ctx = canvas.getContext("2d");
  const data = history[key];
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...data);
  ctx.strokeStyle = "#ddd";
  ctx.beginPath(); ctx.moveTo(0, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
  ctx.fillStyle = "#666"; ctx.font = "10px sans-serif"; ctx.fillText(String(+max.toFixed(2)), 2, 10);
  ctx.strokeStyle = "#2a6fdb"; ctx.lineWidth = 1.5;
  ctx.beginPath();
  data.forEach((v, i) => {
    const x = w - (data.length - 1 - i) * (w / (POINTS - 1));
    const y = h - 2 - (v / max) * (h - 14);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

// A rate with the precision it needs: 0.25/s, 3.5/s, 120/s.
function rate(value) {
  const v = value || 0;
  return String(v >= 100 ? Math.round(v) : v >= 10 ? +v.toFixed(1) : +v.toFixed(2));
}

function onRates(point) {
  for (const key of SERIES) {
    history[key].push(point[key] || 0);
    if (history[key].length > POINTS) history[key].shift();
    draw(key);
    const now = document.getElementById("rate-" + key);
    if (now) now.textContent = rate(point[key]);
    const total = document.getElementById("total-" + key);
    if (total) total.textContent = String(point[key + "_total"] || 0);
  }
}

// The live events: fetch() streaming, since EventSource cannot send an Authorization header.
function parseEvents(buffer, onEvent) {
  let end;
  while ((end = buffer.indexOf("\n\n")) >= 0) {
    let name = "message", data = "";
    for (const line of buffer.slice(0, end).split("\n")) {
      if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (data) onEvent(name, data);
    buffer = buffer.slice(end + 2);
  }
  return buffer;
}

async function connect() {
  const status = document.getElementById("live");
  for (;;) {
    try {
      const r = await api("/dashboard/events");
      if (r.ok) {
        status.textContent = "live"; status.className = "status live";
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer = parseEvents(buffer + value, (name, data) => { if (name === "rates") onRates(JSON.parse(data)); });
        }
      }
    } catch (e) { /* the server went away: reconnect below */ }
    status.textContent = "reconnecting…"; status.className = "status";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function when(t) {
  if (t === null || t === undefined) return "";
  const s = Math.round(t - Date.now() / 1000);
  const a = Math.abs(s);
  const text = a < 60 ? a + "s" : a < 3600 ? Math.round(a / 60) + "m" : a < 86400 ? Math.round(a / 3600) + "h" : Math.round(a / 86400) + "d";
  return s >= 0 ? "in " + text : text + " ago";
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function cell(row, text, title, className) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (title) td.title = title;
  if (className) td.className = className;
  return td;
}

// A URL in full: it wraps (CSS .url) and its title repeats it, never cut where the relay name starts.
function url(row, text) { return cell(row, text, text, "url"); }

// Why a delivery is not on its way (hub.admin._waiting), or what happens to it now.
function waiting(d) {
  const w = d.waiting || {};
  if (w.reason === "host saturated") {
    return "host saturated: " + w.in_flight + " claimed for " + w.host + ", " + w.limit + " sent at a time";
  }
  if (d.state === "in flight") return "sending now";
  if (d.state === "failed") return "given up";
  if (w.reason === "behind") return "behind sequence " + w.seq + " (sent in order)";
  if (w.reason === "backoff") return "backoff until " + clock(w.until) + " (" + when(w.until) + ")";
  if (w.reason === "due") return "due " + when(d.next_attempt_at) + ", next for the outbox";
  return when(d.next_attempt_at);
}

function button(row, label, url, confirmText) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.dataset.action = url;
  b.addEventListener("click", async () => {
    if (confirmText && !window.confirm(confirmText)) return;
    b.disabled = true;
    const r = await api(url, { method: "POST" });
    if (!r.ok) window.alert(label + ": " + (await r.text()));
    refresh();
  });
  let td = row.cells[row.cells.length - 1];
  if (!td || !td.classList.contains("actions")) { td = row.insertCell(); td.className = "actions"; }
  td.appendChild(b);
}

function fill(id, items, render) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  // Each cell carries its column's name, shown beside it when narrow screens stack the rows.
  const labels = [...document.querySelectorAll("#" + id + " th")].map((th) => th.textContent);
  for (const item of items) {
    const row = body.insertRow();
    render(row, item);
    [...row.cells].forEach((td, i) => { if (labels[i]) td.dataset.label = labels[i]; });
  }
  if (!items.length) {
    const td = body.insertRow().insertCell();
    td.colSpan = document.querySelectorAll("#" + id + " th").length;
    td.className = "empty";
    td.textContent = "none";
  }
}

async function refresh() {
  const r = await api("/dashboard/api/state");
  if (!r.ok) return;
  const s = await r.json();
  fill("deliveries", s.deliveries, (row, d) => {
    row.dataset.id = d.id; row.className = "state-" + d.state.replace(" ", "-");
    cell(row, d.id + " · seq " + d.seq); url(row, d.topic); url(row, d.callback); cell(row, d.state);
    cell(row, d.attempts); cell(row, waiting(d)); cell(row, d.last_error, d.last_error, "text");
    button(row, "Retry now", "/dashboard/api/deliveries/" + d.id + "/retry");
    button(row, "Cancel", "/dashboard/api/deliveries/" + d.id + "/cancel");
  });
  fill("subscriptions", s.subscriptions, (row, x) => {
    row.dataset.id = x.id;
    // An ended subscription (expired, unsubscribed, gone) has no lease left to show.
    url(row, x.topic); url(row, x.callback); cell(row, x.state); cell(row, x.state === "active" ? when(x.expires_at) : "—");
    cell(row, x.pending); cell(row, x.failed); cell(row, x.last_failure, x.last_failure, "text");
    button(row, "Delete", "/dashboard/api/subscriptions/" + x.id + "/delete", "Delete this subscription?");
  });
  fill("registrations", s.registrations, (row, x) => {
    row.dataset.id = x.name;
    cell(row, x.name); cell(row, x.pollers); cell(row, x.queued); cell(row, x.lease_seconds); cell(row, when(x.expires_at));
    button(row, "Delete", "/dashboard/api/registrations/" + encodeURIComponent(x.name) + "/delete", "Delete registration " + x.name + "?");
  });
}

function signIn() {
  const form = document.getElementById("login");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const message = document.getElementById("message");
    const r = await fetch("/dashboard/login", {
      method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "omit", cache: "no-store",
    });
    if (!r.ok) { message.textContent = (await r.text()).trim(); return; }
    window.sessionStorage.setItem(SESSION, (await r.json()).session);
    window.location.replace("/dashboard/");
  });
}

function dashboard() {
  if (!session()) { signedOut(); return; }
  document.getElementById("logout").addEventListener("click", async () => {
    await api("/dashboard/logout", { method: "POST" });
    signedOut();
  });
  connect();
  refresh();
  setInterval(refresh, 2000);
}

if (document.getElementById("login")) signIn(); else dashboard();
