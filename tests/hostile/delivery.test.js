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
