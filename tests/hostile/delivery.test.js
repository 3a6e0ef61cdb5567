// Issue 12: "Messages marked delivered are lost." 25,000 messages wait for an offline user, who
// then joins from a client that does not read for 8 s: every one must arrive, exactly once,
// eventually (over reconnects if the server drops the slow socket).
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { MiB, assertSurvived, honest, mb, pool, postJson, sleep, startTako, watchRss } from "./helpers.js";

const TOTAL = 25_000;

/** One connection of the user: joins `notifications`, stops reading for `stallMs`, collects `msg` ids. */
function connectUser(server, token, got, stallMs) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket/websocket?vsn=2.0.0&userToken=${token}`);
    const conn = { closeCode: null, joined: false, received: 0 };
    ws.on("message", (data) => {
      const [, , , event, payload] = JSON.parse(data.toString());
      if (event === "phx_reply" && payload.status === "ok") conn.joined = true;
      if (event !== "msg") return;
      conn.received++;
      got.counts.set(payload.id, (got.counts.get(payload.id) || 0) + 1);
    });
    ws.once("open", () => {
      ws.send(JSON.stringify(["1", "1", "notifications", "phx_join", {}]));
      if (stallMs > 0) {
        ws._socket.pause();
        setTimeout(() => ws._socket.resume(), stallMs);
      }
      resolve(conn);
    });
    ws.once("error", reject);
    conn.closed = new Promise((r) => ws.once("close", (code) => r((conn.closeCode = code))));
    conn.ws = ws;
  });
}

test("25,000 waiting messages reach a client that does not read for 8 s: every one exactly once; RSS < 400 MiB", async (t) => {
  const server = await startTako({ TAKO_LOG: "error" });
  try {
    const h = await honest(server);
    const user = await server.register("Waiting_One");
    const started = Date.now();
    const ids = new Set();
    await pool(TOTAL, 16, async (i) => {
      const [status, body] = await postJson(server, "/api/messages", { user_id: user, message: `message ${i}` });
      if (status !== 202) throw new Error(`send ${i}: ${status} ${body}`);
      ids.add(JSON.parse(body).id);
    });
    t.diagnostic(`${TOTAL} messages stored in ${((Date.now() - started) / 1000).toFixed(1)} s`);

    const watch = watchRss(server.pid);
    const got = { counts: new Map() };
    const connections = [];
    const deadline = Date.now() + 60000;
    let stall = 8000;
    while (got.counts.size < TOTAL && Date.now() < deadline) {
      const conn = await connectUser(server, user, got, stall);
      connections.push(conn);
      stall = 0; // a reconnect (as the phoenix client would make) reads at once
      while (conn.closeCode === null && got.counts.size < TOTAL && Date.now() < deadline) await sleep(100);
      if (conn.closeCode === null) conn.ws.close();
      else await sleep(200);
    }
    const peak = watch.stop();
    const duplicates = [...got.counts.values()].filter((n) => n > 1).length;
    const foreign = [...got.counts.keys()].filter((id) => !ids.has(id)).length;
    t.diagnostic(
      `received ${got.counts.size} distinct of ${TOTAL} over ${connections.length} connection(s) ` +
        `(closes: ${connections.map((c) => c.closeCode)}; per connection: ${connections.map((c) => c.received)}); ` +
        `duplicates ${duplicates}; peak RSS ${mb(peak)}`,
    );
    assert.equal(foreign, 0);
    assert.equal(duplicates, 0, "no message arrived twice");
    assert.equal(got.counts.size, TOTAL, "every message arrived");
    await assertSurvived(t, assert, server, h, { peak, rssBound: 400 * MiB, label: "25,000 waiting" });
    h.close();
  } finally {
    await server.cleanup();
  }
});

// A client that keeps its connection but stops reading holds its messages only for
// TAKO_MESSAGE_WRITE_TIMEOUT: then the server closes that socket, and what it had not written is
// never written there — the next connection gets it, each message once (a server that merely
// gave up waiting would send those messages again while the first copies still sat in the old
// socket's queue, and the client would read both).
test("messages stuck behind a client that stopped reading go to its next connection, exactly once", async (t) => {
  const TIMEOUT_S = 3;
  const COUNT = 1500;
  const server = await startTako({
    TAKO_LOG: "error",
    TAKO_MESSAGE_WRITE_TIMEOUT: String(TIMEOUT_S),
    // Room for every message in the socket's queue: only the write timeout may end it.
    TAKO_MAX_QUEUED_BYTES: String(64 * MiB),
  });
  try {
    const h = await honest(server);
    const watch = watchRss(server.pid);
    const user = await server.register("Stalled_Reader");
    const got = { counts: new Map() };
    // 12 KB each (4,096 three-byte characters): 18 MB in all, more than loopback's buffers take.
    const filler = "あ".repeat(4090);
    const first = await connectUser(server, user, got, 12_000);
    await sleep(500);
    const ids = new Set();
    await pool(COUNT, 16, async (i) => {
      const [status, body] = await postJson(server, "/api/messages", { user_id: user, message: `${String(i).padStart(5, "0")}${filler}` });
      if (status !== 202) throw new Error(`send ${i}: ${status} ${body}`);
      ids.add(JSON.parse(body).id);
    });
    const firstCode = await Promise.race([first.closed, sleep(30000).then(() => "open")]);
    const connections = [first];
    const deadline = Date.now() + 60000;
    while (got.counts.size < COUNT && Date.now() < deadline) {
      const conn = await connectUser(server, user, got, 0);
      connections.push(conn);
      while (conn.closeCode === null && got.counts.size < COUNT && Date.now() < deadline) await sleep(100);
      if (conn.closeCode === null) conn.ws.close();
    }
    const peak = watch.stop();
    const duplicates = [...got.counts.values()].filter((n) => n > 1).length;
    t.diagnostic(
      `first connection: ${first.received} read before its close (${firstCode}); ` +
        `then ${connections.slice(1).map((c) => c.received)} on ${connections.length - 1} more; duplicates ${duplicates}`,
    );
    assert.notEqual(firstCode, "open", "the stalled socket was closed");
    assert.ok(first.received < COUNT, "the stalled socket did not take everything (the test must stall it)");
    assert.equal(duplicates, 0, "no message arrived twice");
    assert.equal(got.counts.size, COUNT, "every message arrived");
    assert.ok([...got.counts.keys()].every((id) => ids.has(id)));
    await assertSurvived(t, assert, server, h, { peak, rssBound: 400 * MiB, label: "stalled reader" });
    h.close();
  } finally {
    await server.cleanup();
  }
});
