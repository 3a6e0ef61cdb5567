// Tako's operators' dashboard: plain JavaScript, no build step. The admin token lives in
// sessionStorage (this tab only) and travels in the Authorization header; the live counts come
// from /dashboard/stream, a server-sent-events stream read with fetch.
"use strict";

const TOKEN_KEY = "tako.adminToken";
const HISTORY_SECONDS = 300;
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY);
let streamAbort = null;
let history = []; // {at, sockets, users, rateOut}
let last = null;
let recipient = null;

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${token}`, Accept: "application/json", ...extra };
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) {
    const detail = json?.errors?.[0]?.detail || `${res.status} ${res.statusText}`;
    const error = new Error(detail);
    error.status = res.status;
    throw error;
  }
  return json;
}

function setStatus(text, live) {
  $("status").textContent = text;
  $("status").classList.toggle("live", !!live);
}

function showApp(signedIn) {
  $("login").hidden = signedIn;
  $("logout").hidden = !signedIn;
  $("tabs").hidden = !signedIn;
  if (signedIn) showTab(currentTab);
  else { $("app").hidden = true; $("events").hidden = true; }
}

async function signIn(candidate) {
  token = candidate;
  try {
    await startStream();
  } catch (error) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showApp(false);
    $("login-error").textContent = error.status === 401 || error.status === 403 ? "That is not the admin token." : `Cannot sign in: ${error.message}`;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login-error").textContent = "";
  showApp(true);
  loadLeaderboard();
}

function signOut() {
  if (streamAbort) streamAbort.abort();
  clearInterval(eventsTimer);
  selected = null;
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  history = [];
  last = null;
  showApp(false);
  setStatus("signed out");
}

// Resolves once the stream is open (rejects on 401/403), then keeps reading and reconnects.
async function startStream() {
  if (streamAbort) streamAbort.abort();
  const abort = new AbortController();
  streamAbort = abort;
  const res = await fetch("/dashboard/stream", { headers: authHeaders({ Accept: "text/event-stream" }), signal: abort.signal });
  if (!res.ok) {
    const error = new Error(`${res.status}`);
    error.status = res.status;
    throw error;
  }
  setStatus("live", true);
  readStream(res, abort).catch(() => {}).finally(() => {
    if (abort.signal.aborted || !token) return;
    setStatus("reconnecting…");
    setTimeout(() => { if (token && streamAbort === abort) startStream().catch(() => setTimeout(() => startStream().catch(() => {}), 3000)); }, 1000);
  });
}

async function readStream(res, abort) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  while (!abort.signal.aborted) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (event === "snapshot" && data.length) onSnapshot(JSON.parse(data.join("\n")));
    }
  }
}

function onSnapshot(s) {
  let rateIn = 0, rateOut = 0;
  if (last) {
    const dt = Math.max((s.at - last.at) / 1000, 0.001);
    rateIn = Math.max(0, (s.messages_in - last.messages_in) / dt);
    rateOut = Math.max(0, (s.messages_out - last.messages_out) / dt);
  }
  last = s;
  $("count-sockets").textContent = s.sockets;
  $("count-transports").textContent = `${s.websocket} WebSocket · ${s.longpoll} LongPoll`;
  $("count-users").textContent = s.users_online;
  $("rate-in").textContent = rateIn.toFixed(rateIn < 10 ? 1 : 0);
  $("rate-out").textContent = rateOut.toFixed(rateOut < 10 ? 1 : 0);
  history.push({ at: s.at, sockets: s.sockets, users: s.users_online, rateOut });
  const cutoff = s.at - HISTORY_SECONDS * 1000;
  while (history.length && history[0].at < cutoff) history.shift();
  drawChart();
  renderPresence(s.presence);
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 320, height = canvas.clientHeight || 220;
  if (canvas.width !== Math.round(width * ratio)) { canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const now = history.length ? history[history.length - 1].at : Date.now();
  const x = (at) => width - ((now - at) / (HISTORY_SECONDS * 1000)) * width;
  const max = Math.max(1, ...history.map((h) => Math.max(h.sockets, h.users, h.rateOut)));
  const y = (v) => height - 16 - (v / max) * (height - 28);
  ctx.fillStyle = style.getPropertyValue("--muted");
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText(`${Math.round(max)}`, 4, 12);
  ctx.fillText(`${HISTORY_SECONDS / 60} min ago`, 4, height - 2);
  ctx.fillText("now", width - 28, height - 2);
  for (const [key, color] of [["sockets", "--accent"], ["users", "--users"], ["rateOut", "--rate"]]) {
    ctx.strokeStyle = style.getPropertyValue(color);
    ctx.lineWidth = 2;
    ctx.beginPath();
    history.forEach((h, i) => (i ? ctx.lineTo(x(h.at), y(h[key])) : ctx.moveTo(x(h.at), y(h[key]))));
    ctx.stroke();
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function since(ms) {
  if (!ms) return "";
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  const text = seconds < 60 ? `${seconds} s` : seconds < 3600 ? `${Math.floor(seconds / 60)} min` : `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `online for ${text} (since ${new Date(ms).toLocaleTimeString()})`;
}

function renderPresence(topics) {
  const box = $("presence");
  box.replaceChildren();
  if (!topics.length) { box.append(el("p", { class: "hint" }, "Nobody is connected.")); return; }
  for (const t of topics) {
    const list = el("ul", { class: "people" });
    for (const u of t.users) {
      const name = u.nickname || "(no nickname)";
      const extra = u.connections > 1 ? ` · ${u.connections} connections` : "";
      list.append(el("li", { "data-nickname": u.nickname || "" }, el("span", { class: "nick" }, name), el("span", { class: "since" }, since(u.since) + extra)));
    }
    box.append(el("div", { class: "topic", "data-topic": t.topic }, el("h3", {}, `${t.topic} — ${t.online} online`), list));
  }
}

async function search(event) {
  event.preventDefault();
  const q = $("search").value.trim();
  const results = $("search-results");
  results.replaceChildren();
  if (!q) return;
  try {
    const found = await api("GET", `/api/users/search?nickname=${encodeURIComponent(q)}&limit=20`);
    if (!found.data.length) results.append(el("li", {}, "No user has such a nickname."));
    for (const user of found.data) {
      const pick = el("button", { type: "button", class: "secondary" }, "Message");
      pick.addEventListener("click", () => choose(user));
      results.append(el("li", { "data-nickname": user.nickname }, el("span", {}, `${user.nickname} · ${user.stamps_collected} stamps`), pick));
    }
  } catch (error) {
    results.append(el("li", { class: "error" }, error.message));
  }
}

function choose(user) {
  recipient = user;
  $("recipient").textContent = user.nickname || "(no nickname)";
  $("message-form").hidden = false;
  $("message-card").scrollIntoView({ block: "nearest" });
  $("message").focus();
}

async function sendMessage(event) {
  event.preventDefault();
  if (!recipient) return;
  const text = $("message").value;
  const item = el("li", {}, el("span", {}, `To ${recipient.nickname || "(no nickname)"}: ${text}`));
  $("sent").prepend(item);
  try {
    const sent = await api("POST", "/api/messages", { user_id: recipient.id, message: text });
    const badge = el("span", { class: `badge ${sent.delivered ? "live" : "waiting"}`, "data-message-id": sent.id }, sent.delivered ? "delivered live" : "waiting (offline)");
    item.append(badge);
    $("message").value = "";
    if (!sent.delivered) watchDelivery(sent.id, badge);
  } catch (error) {
    item.append(el("span", { class: "error" }, error.message));
  }
}

// A waiting message is delivered when its user next joins: check now and then.
async function watchDelivery(id, badge) {
  for (let i = 0; i < 120 && token; i++) {
    await new Promise((r) => setTimeout(r, 5000));
    try {
      const status = await api("GET", `/api/messages/${id}`);
      if (status.delivered) { badge.className = "badge live"; badge.textContent = "delivered"; return; }
    } catch { return; }
  }
}

async function broadcast(event) {
  event.preventDefault();
  const result = $("broadcast-result");
  try {
    const sent = await api("POST", "/api/broadcasts", { topic: $("b-topic").value, event: $("b-event").value, payload: { text: $("b-text").value } });
    result.className = "result";
    result.textContent = `Sent to ${sent.subscribers} socket${sent.subscribers === 1 ? "" : "s"} on ${sent.topic}.`;
  } catch (error) {
    result.className = "result error";
    result.textContent = error.message;
  }
}

async function loadLeaderboard() {
  if (!token) return;
  try {
    const board = await api("GET", "/api/json/leaderboard?limit=10");
    const list = $("leaderboard");
    list.replaceChildren(...board.data.map((row) => el("li", {}, `${row.nickname} — ${row.stamps_collected}`)));
    if (!board.data.length) list.replaceChildren(el("li", { class: "hint" }, "No one has a nickname and stamps yet."));
  } catch { /* the next refresh tries again */ }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value); $("token").value = ""; });
  $("logout").addEventListener("click", signOut);
  $("search-form").addEventListener("submit", search);
  $("message-form").addEventListener("submit", sendMessage);
  $("broadcast-form").addEventListener("submit", broadcast);
  setupEvents();
  setInterval(loadLeaderboard, 10000);
  window.addEventListener("resize", () => { drawChart(); drawScanChart(); });
  if (token) signIn(token); else showApp(false);
});


// ---- the Events page ---------------------------------------------------------------------------
// Events and their stamps (JSON:API), statistics, the booth CSV import (a zip of QR codes back),
// booth links, completers, prize draws and CSV exports. Everything with the admin token.

let currentTab = "live";
let events = [];
let selected = null; // the event's id
let stamps = []; // the selected event's stamps (JSON:API resources)
let stats = null; // its statistics
let editing = null; // the stamp being edited
let eventsTimer = null;
const COMPLETERS_SHOWN = 200;

function showTab(tab) {
  currentTab = tab;
  $("app").hidden = tab !== "live";
  $("events").hidden = tab !== "events";
  $("tab-live").setAttribute("aria-selected", String(tab === "live"));
  $("tab-events").setAttribute("aria-selected", String(tab === "events"));
  // One message form, on whichever page is shown.
  (tab === "events" ? $("events") : $("app")).append($("message-card"));
  if (tab === "events") { loadEvents(); drawScanChart(); }
  clearInterval(eventsTimer);
  if (tab === "events") eventsTimer = setInterval(() => { if (selected && token) loadStats().catch(() => {}); }, 10000);
  else drawChart();
}

function jsonapi(type, attributes, id) {
  return { data: { type, ...(id ? { id } : {}), attributes } };
}

function say(id, text, isError) {
  const node = $(id);
  node.className = isError ? "result error" : "result";
  node.textContent = text;
}

// An ISO time as a datetime-local value (the browser's time zone), and back.
function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
function fromLocalInput(value) {
  return value ? new Date(value).toISOString() : null;
}
function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// Lists the events; shows `show` (else the one shown, else the first) with fresh details.
async function loadEvents(show) {
  try {
    events = (await api("GET", "/api/json/events")).data;
  } catch (error) {
    $("event-list").replaceChildren(el("li", { class: "error" }, error.message));
    return;
  }
  renderEvents();
  if (show && events.some((e) => e.id === show)) await selectEvent(show);
  else if (selected && events.some((e) => e.id === selected)) await refreshSelected();
  else if (events.length) await selectEvent(events[0].id);
  else { selected = null; $("event-detail").hidden = true; }
}

async function refreshSelected() {
  const ev = events.find((e) => e.id === selected);
  if (ev) fillEventForm(ev);
  // Draws first: the completers list marks who was drawn.
  await Promise.all([loadStamps(), loadDraws().then(loadCompleters)]).catch((error) => say("event-result", error.message, true));
}

function renderEvents() {
  const list = $("event-list");
  list.replaceChildren();
  if (!events.length) list.append(el("li", { class: "hint" }, "No event yet: create one below."));
  for (const ev of events) {
    const a = ev.attributes;
    const pick = el("button", { type: "button", class: ev.id === selected ? "pick current" : "pick" },
      el("span", { class: "nick" }, a.name), el("span", { class: "since" }, ` ${ev.id} · ${a.stamps_required} to complete${a.visible ? "" : " · hidden"}`));
    pick.addEventListener("click", () => selectEvent(ev.id));
    list.append(el("li", { "data-event": ev.id }, pick));
  }
}

async function selectEvent(id) {
  selected = id;
  editing = null;
  $("stamp-edit-form").hidden = true;
  $("stamp-secret").hidden = true;
  $("import-result").replaceChildren();
  renderEvents();
  $("event-detail").hidden = false;
  await refreshSelected();
}

function fillEventForm(ev) {
  const a = ev.attributes;
  $("event-title").textContent = `${a.name} (${ev.id})`;
  $("ed-name").value = a.name;
  $("ed-required").value = a.stamps_required;
  $("ed-opens").value = toLocalInput(a.opens_at);
  $("ed-closes").value = toLocalInput(a.closes_at);
  $("ed-visible").checked = a.visible;
}

async function createEvent(e) {
  e.preventDefault();
  const id = $("ev-id").value.trim();
  try {
    await api("POST", "/api/json/events", jsonapi("event", { name: $("ev-name").value.trim(), stamps_required: Number($("ev-required").value) }, id));
    say("event-create-result", `Created ${id}.`);
    $("event-create-form").reset();
    $("new-event").open = false;
    await loadEvents(id);
  } catch (error) {
    say("event-create-result", error.message, true);
  }
}

async function saveEvent(e) {
  e.preventDefault();
  if (!selected) return;
  try {
    const saved = await api("PATCH", `/api/json/events/${encodeURIComponent(selected)}`, jsonapi("event", {
      name: $("ed-name").value.trim(),
      stamps_required: Number($("ed-required").value),
      opens_at: fromLocalInput($("ed-opens").value),
      closes_at: fromLocalInput($("ed-closes").value),
      visible: $("ed-visible").checked,
    }));
    events = events.map((ev) => (ev.id === selected ? saved.data : ev));
    renderEvents();
    fillEventForm(saved.data);
    say("event-result", "Saved.");
  } catch (error) {
    say("event-result", error.message, true);
  }
}

async function loadStamps() {
  const id = selected;
  const doc = await api("GET", `/api/json/events/${encodeURIComponent(id)}?include=stamps`);
  if (id !== selected) return;
  stamps = doc.included || [];
  await loadStats();
}

async function loadStats() {
  const id = selected;
  const minutes = $("stat-window").value;
  const doc = await api("GET", `/api/json/events/${encodeURIComponent(id)}/stats?minutes=${minutes}`);
  if (id !== selected) return;
  stats = doc.data.attributes;
  $("stat-scans").textContent = stats.scans;
  $("stat-completers").textContent = stats.completers;
  renderStamps();
  drawScanChart();
}

function renderStamps() {
  const body = $("stamps").querySelector("tbody");
  body.replaceChildren();
  const scans = new Map((stats?.stamps || []).map((s) => [s.id, s.scans]));
  const most = Math.max(1, ...scans.values());
  if (!stamps.length) body.append(el("tr", {}, el("td", { colSpan: 5, class: "hint" }, "No stamps yet: import a CSV of booths or create one below.")));
  for (const stamp of stamps) {
    const a = stamp.attributes;
    const count = scans.get(stamp.id) ?? 0;
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.round((count / most) * 100)}%`;
    const actions = el("div", { class: "actions" });
    const edit = el("button", { type: "button", class: "secondary small-btn" }, "Edit");
    edit.addEventListener("click", () => editStamp(stamp));
    const hide = el("button", { type: "button", class: "secondary small-btn" }, a.visible ? "Hide" : "Show");
    hide.addEventListener("click", () => setVisible(stamp, !a.visible));
    actions.append(edit, hide);
    if (a.mode === "screen") {
      const link = el("button", { type: "button", class: "secondary small-btn", "data-action": "booth-link" }, "Booth link");
      link.addEventListener("click", () => boothLink(stamp));
      const revoke = el("button", { type: "button", class: "secondary small-btn", "data-action": "revoke" }, "Revoke link");
      revoke.addEventListener("click", () => revokeLink(stamp));
      actions.append(link, revoke);
    }
    body.append(el("tr", { "data-stamp": stamp.id, "data-booth": a.booth_id || "", class: a.visible ? "" : "hidden-stamp" },
      el("td", {}, a.name, a.visible ? "" : el("span", { class: "badge waiting" }, "hidden")),
      el("td", {}, a.booth_id || "—"),
      el("td", {}, a.mode),
      el("td", { class: "scans" }, el("span", { class: "count" }, String(count)), bar),
      el("td", {}, actions)));
  }
}

function drawScanChart() {
  const canvas = $("scan-chart");
  if (!canvas || $("events").hidden) return;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 320, height = canvas.clientHeight || 200;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) { canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  if (!stats) return;
  const style = getComputedStyle(document.documentElement);
  const since = Date.parse(stats.since);
  const minutes = stats.minutes;
  const counts = new Array(minutes).fill(0);
  for (const m of stats.per_minute) {
    const i = Math.floor((Date.parse(m.minute) - since) / 60000);
    if (i >= 0 && i < minutes) counts[i] = m.scans;
  }
  const max = Math.max(1, ...counts);
  const top = 16, bottom = 16;
  const barWidth = width / minutes;
  ctx.fillStyle = style.getPropertyValue("--accent");
  counts.forEach((n, i) => {
    if (!n) return;
    const h = (n / max) * (height - top - bottom);
    ctx.fillRect(i * barWidth, height - bottom - h, Math.max(1, barWidth - (barWidth > 3 ? 1 : 0)), h);
  });
  ctx.fillStyle = style.getPropertyValue("--muted");
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText(`${max} /min`, 4, 12);
  const span = minutes >= 120 ? `${minutes / 60} h ago` : `${minutes} min ago`;
  ctx.fillText(span, 4, height - 2);
  ctx.fillText("now", width - 28, height - 2);
  const busiest = counts.reduce((a, b) => Math.max(a, b), 0);
  $("scan-chart-note").textContent = busiest ? `· busiest minute: ${busiest}` : "· no scans in this window";
}

function showSecret(text, value) {
  $("stamp-secret-text").textContent = text;
  $("stamp-secret-value").value = value;
  $("stamp-secret").hidden = false;
  $("stamp-secret").scrollIntoView({ block: "nearest" });
}

async function createStamp(e) {
  e.preventDefault();
  const booth = $("st-booth").value.trim();
  try {
    const made = await api("POST", `/api/json/events/${encodeURIComponent(selected)}/stamps`, jsonapi("stamp", {
      name: $("st-name").value.trim(), booth_id: booth || null, mode: $("st-mode").value,
    }));
    $("stamp-create-form").reset();
    $("new-stamp").open = false;
    say("stamp-result", `Created ${made.data.attributes.name}.`);
    if (made.meta?.qr) showSecret("Its printed code (put this in its QR code):", made.meta.qr);
    else $("stamp-secret").hidden = true;
    await loadStamps();
  } catch (error) {
    say("stamp-result", error.message, true);
  }
}

function editStamp(stamp) {
  editing = stamp;
  const a = stamp.attributes;
  $("se-title").textContent = a.name;
  $("se-name").value = a.name;
  $("se-booth").value = a.booth_id || "";
  $("se-description").value = a.description || "";
  $("se-visible").checked = a.visible;
  $("se-nsfw").checked = a.nsfw;
  $("stamp-edit-form").hidden = false;
  $("stamp-edit-form").scrollIntoView({ block: "nearest" });
  $("se-name").focus();
}

async function patchStamp(stamp, attributes) {
  await api("PATCH", `/api/json/stamps/${stamp.id}`, jsonapi("stamp", attributes, stamp.id));
  await loadStamps();
}

async function saveStamp(e) {
  e.preventDefault();
  if (!editing) return;
  try {
    await patchStamp(editing, {
      name: $("se-name").value.trim(),
      booth_id: $("se-booth").value.trim() || null,
      description: $("se-description").value.trim() || null,
      visible: $("se-visible").checked,
      nsfw: $("se-nsfw").checked,
    });
    say("stamp-result", `Saved ${$("se-name").value.trim()}.`);
    $("stamp-edit-form").hidden = true;
    editing = null;
  } catch (error) {
    say("stamp-result", error.message, true);
  }
}

async function setVisible(stamp, visible) {
  try {
    await patchStamp(stamp, { visible });
    say("stamp-result", `${stamp.attributes.name} is ${visible ? "visible" : "hidden"}.`);
  } catch (error) {
    say("stamp-result", error.message, true);
  }
}

async function boothLink(stamp) {
  try {
    const made = await fetchJson("POST", `/api/json/stamps/${stamp.id}/booth-key`);
    showSecret(`Booth link of ${stamp.attributes.name}: open it on the booth's phone or tablet. A new link stops the old one.`, location.origin + made.path);
    say("stamp-result", "");
  } catch (error) {
    say("stamp-result", error.message, true);
  }
}

async function revokeLink(stamp) {
  if (!confirm(`Revoke the booth link of ${stamp.attributes.name}? Its page stops showing codes.`)) return;
  try {
    await fetchJson("DELETE", `/api/json/stamps/${stamp.id}/booth-key`);
    $("stamp-secret").hidden = true;
    say("stamp-result", `Revoked: the booth page of ${stamp.attributes.name} stops showing codes.`);
  } catch (error) {
    say("stamp-result", error.message, true);
  }
}

// The booth-key routes answer plain JSON (or nothing).
async function fetchJson(method, path) {
  const res = await fetch(path, { method, headers: authHeaders() });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) throw new Error(json?.errors?.[0]?.detail || `${res.status} ${res.statusText}`);
  return json;
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function errorsOf(res) {
  try {
    const doc = await res.json();
    const details = (doc.errors || []).map((e) => e.detail);
    if (details.length) return details;
  } catch { /* not JSON */ }
  return [`${res.status} ${res.statusText}`];
}

async function importCsv(e) {
  e.preventDefault();
  const file = $("import-file").files[0];
  const out = $("import-result");
  out.replaceChildren();
  if (!file) return;
  out.className = "result";
  out.append(el("p", {}, `Importing ${file.name}…`));
  const res = await fetch(`/api/events/${encodeURIComponent(selected)}/stamps/import`, {
    method: "POST",
    headers: authHeaders({ Accept: "application/zip", "Content-Type": "text/csv" }),
    body: file,
  }).catch((error) => ({ ok: false, status: 0, statusText: error.message, json: async () => ({}) }));
  out.replaceChildren();
  if (!res.ok) {
    out.className = "result error";
    out.append(el("p", {}, "Nothing was imported:"), el("ul", { class: "line-errors" }, ...(await errorsOf(res)).map((d) => el("li", {}, d))));
    return;
  }
  const created = Number(res.headers.get("tako-stamps-created") || 0);
  const updated = Number(res.headers.get("tako-stamps-updated") || 0);
  download(await res.blob(), `${selected}-qr-codes.zip`);
  out.append(el("p", { "data-created": created, "data-updated": updated }, `${created} stamp${created === 1 ? "" : "s"} created, ${updated} updated. The QR codes of the new printed stamps are in the downloaded zip — keep it: they are not shown again.`));
  $("import-form").reset();
  await loadStamps();
}

async function exportCsv(kind) {
  const ids = $("csv-user-ids").checked;
  const res = await fetch(`/api/events/${encodeURIComponent(selected)}/${kind}.csv?user_ids=${ids}`, { headers: authHeaders({ Accept: "text/csv" }) });
  if (!res.ok) { say("draw-result", (await errorsOf(res))[0], true); return; }
  download(await res.blob(), `${selected}-${kind}.csv`);
}

function messageButton(user) {
  const button = el("button", { type: "button", class: "secondary small-btn", "data-action": "message" }, "Message");
  button.addEventListener("click", () => choose(user));
  return button;
}

let drawnUsers = new Set();

async function loadDraws() {
  const id = selected;
  const doc = await api("GET", `/api/json/events/${encodeURIComponent(id)}/draws`);
  if (id !== selected) return;
  drawnUsers = new Set();
  const box = $("draws");
  box.replaceChildren();
  if (!doc.data.length) box.append(el("p", { class: "hint" }, "No draw yet."));
  for (const draw of [...doc.data].reverse()) {
    const a = draw.attributes;
    const list = el("ul", { class: "people" });
    for (const w of a.winners) {
      drawnUsers.add(w.user_id);
      list.append(el("li", { "data-user": w.user_id, "data-nickname": w.nickname || "" },
        el("span", { class: "nick" }, w.nickname || "(no nickname)"), messageButton({ id: w.user_id, nickname: w.nickname })));
    }
    box.append(el("div", { class: "draw", "data-draw": draw.id },
      el("h3", {}, `${when(a.drawn_at)} — ${a.winners.length} of ${a.requested} asked`), list));
  }
}

async function loadCompleters() {
  const id = selected;
  const doc = await api("GET", `/api/json/events/${encodeURIComponent(id)}/completers`);
  if (id !== selected) return;
  $("completer-count").textContent = doc.data.length;
  const list = $("completers");
  list.replaceChildren();
  if (!doc.data.length) list.append(el("li", { class: "hint" }, "Nobody has completed the rally yet."));
  for (const c of doc.data.slice(0, COMPLETERS_SHOWN)) {
    const nickname = c.attributes.nickname;
    list.append(el("li", { "data-user": c.id, "data-nickname": nickname || "" },
      el("span", {}, el("span", { class: "nick" }, nickname || "(no nickname)"), " ", el("span", { class: "since" }, when(c.attributes.completed_at)),
        drawnUsers.has(c.id) ? el("span", { class: "badge live" }, "drawn") : ""),
      messageButton({ id: c.id, nickname })));
  }
  if (doc.data.length > COMPLETERS_SHOWN) list.append(el("li", { class: "hint" }, `… and ${doc.data.length - COMPLETERS_SHOWN} more: download the CSV.`));
}

async function draw(e) {
  e.preventDefault();
  try {
    const drawn = await api("POST", `/api/json/events/${encodeURIComponent(selected)}/draws`, jsonapi("draw", { winners: Number($("draw-count").value) }));
    const names = drawn.data.attributes.winners.map((w) => w.nickname || "(no nickname)");
    say("draw-result", `Drawn: ${names.join(", ")}.`);
  } catch (error) {
    say("draw-result", error.message, true);
  }
  await loadDraws();
  await loadCompleters();
}

function setupEvents() {
  $("tab-live").addEventListener("click", () => showTab("live"));
  $("tab-events").addEventListener("click", () => showTab("events"));
  $("event-create-form").addEventListener("submit", createEvent);
  $("event-form").addEventListener("submit", saveEvent);
  $("stamp-create-form").addEventListener("submit", createStamp);
  $("stamp-edit-form").addEventListener("submit", saveStamp);
  $("se-cancel").addEventListener("click", () => { $("stamp-edit-form").hidden = true; editing = null; });
  $("stamp-secret-copy").addEventListener("click", async () => {
    const input = $("stamp-secret-value");
    input.select();
    try { await navigator.clipboard.writeText(input.value); $("stamp-secret-copy").textContent = "Copied"; } catch { document.execCommand("copy"); }
    setTimeout(() => { $("stamp-secret-copy").textContent = "Copy"; }, 2000);
  });
  $("stat-window").addEventListener("change", () => loadStats().catch(() => {}));
  $("import-form").addEventListener("submit", importCsv);
  $("draw-form").addEventListener("submit", draw);
  $("completers-csv").addEventListener("click", () => exportCsv("completers"));
  $("draws-csv").addEventListener("click", () => exportCsv("draws"));
}
