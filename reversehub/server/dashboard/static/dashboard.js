// reversehub dashboard: live charts from server-sent events, tables from the JSON API.
// No dependencies. Everything shown comes from the network, so it is written with textContent only.
"use strict";

const POINTS = 120;
const SERIES = ["publishes", "deliveries", "relay_requests", "relay_latency_ms"];
const history = Object.fromEntries(SERIES.map((k) => [k, []]));
const csrf = document.querySelector('meta[name="csrf-token"]').content;

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

function onRates(point) {
  for (const key of SERIES) {
    history[key].push(point[key] || 0);
    if (history[key].length > POINTS) history[key].shift();
    draw(key);
    const total = document.getElementById("total-" + key);
    if (total) total.textContent = String(point[key + "_total"] || 0);
  }
  document.getElementById("now-relay_latency_ms").textContent = String(point.relay_latency_ms || 0);
}

function connect() {
  const status = document.getElementById("live");
  const source = new EventSource("/dashboard/events");
  source.addEventListener("open", () => { status.textContent = "live"; status.className = "status live"; });
  source.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "status"; });
  source.addEventListener("rates", (e) => onRates(JSON.parse(e.data)));
}

function when(t) {
  if (t === null || t === undefined) return "";
  const s = Math.round(t - Date.now() / 1000);
  const a = Math.abs(s);
  const text = a < 60 ? a + "s" : a < 3600 ? Math.round(a / 60) + "m" : a < 86400 ? Math.round(a / 3600) + "h" : Math.round(a / 86400) + "d";
  return s >= 0 ? "in " + text : text + " ago";
}

function cell(row, text, title) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (title) td.title = title;
  return td;
}

function button(row, label, url, confirmText) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.dataset.action = url;
  b.addEventListener("click", async () => {
    if (confirmText && !window.confirm(confirmText)) return;
    b.disabled = true;
    const r = await fetch(url, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
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
  for (const item of items) render(body.insertRow(), item);
  if (!items.length) {
    const td = body.insertRow().insertCell();
    td.colSpan = document.querySelectorAll("#" + id + " th").length;
    td.className = "empty";
    td.textContent = "none";
  }
}

async function refresh() {
  const r = await fetch("/dashboard/api/state", { credentials: "same-origin" });
  if (r.status === 401) { window.location = "/dashboard/login"; return; }
  if (!r.ok) return;
  const s = await r.json();
  fill("deliveries", s.deliveries, (row, d) => {
    row.dataset.id = d.id; row.className = "state-" + d.state.replace(" ", "-");
    cell(row, d.id); cell(row, d.topic); cell(row, d.callback); cell(row, d.state);
    cell(row, d.attempts); cell(row, when(d.next_attempt_at)); cell(row, d.last_error, d.last_error);
    button(row, "Retry now", "/dashboard/api/deliveries/" + d.id + "/retry");
    button(row, "Cancel", "/dashboard/api/deliveries/" + d.id + "/cancel");
  });
  fill("subscriptions", s.subscriptions, (row, x) => {
    row.dataset.id = x.id;
    cell(row, x.topic); cell(row, x.callback); cell(row, x.state); cell(row, when(x.expires_at));
    cell(row, x.pending); cell(row, x.failed); cell(row, x.last_failure, x.last_failure);
    button(row, "Delete", "/dashboard/api/subscriptions/" + x.id + "/delete", "Delete this subscription?");
  });
  fill("registrations", s.registrations, (row, x) => {
    row.dataset.id = x.name;
    cell(row, x.name); cell(row, x.pollers); cell(row, x.queued); cell(row, x.lease_seconds); cell(row, when(x.expires_at));
    button(row, "Delete", "/dashboard/api/registrations/" + encodeURIComponent(x.name) + "/delete", "Delete registration " + x.name + "?");
  });
}

connect();
refresh();
setInterval(refresh, 2000);
