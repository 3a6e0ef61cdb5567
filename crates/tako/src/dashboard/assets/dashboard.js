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
  $("app").hidden = !signedIn;
  $("logout").hidden = !signedIn;
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
  $("recipient").textContent = user.nickname;
  $("message-form").hidden = false;
  $("message").focus();
}

async function sendMessage(event) {
  event.preventDefault();
  if (!recipient) return;
  const text = $("message").value;
  const item = el("li", {}, el("span", {}, `To ${recipient.nickname}: ${text}`));
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
  setInterval(loadLeaderboard, 10000);
  window.addEventListener("resize", drawChart);
  if (token) signIn(token); else showApp(false);
});
