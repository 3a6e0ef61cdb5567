// The LongPoll transport with the official client: the whole notifications event table over
// LongPoll, presence over LongPoll, and the automatic fallback when WebSocket is refused or
// never answers.
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, describe, it } from "node:test";
import { LongPoll, Presence } from "phoenix";
import WebSocket from "ws";
import XMLHttpRequestPolyfill from "xhr2";
import { collect, connect, eventually, join, makeSocket, push, startTako } from "./helpers.js";

let tako;
before(async () => {
  tako = await startTako({ TAKO_LONGPOLL_WINDOW: "2" });
});
after(async () => {
  await tako.cleanup();
});

const poller = (id, opts = {}) => makeSocket(tako, { userToken: id }, { transport: LongPoll, ...opts });

// The JS client's LongPoll always speaks the v2 serializer (it ignores custom encoders), so the
// variants are the client versions: 1.8 uses fetch; 1.7 needs a browser's `self` and
// XMLHttpRequest (polyfilled here, and 1.7 loaded after `self` exists).
for (const [name, load] of [
  ["phoenix 1.8 (fetch)", async () => ({ transport: LongPoll })],
  [
    "phoenix 1.7 (XMLHttpRequest)",
    async () => {
      globalThis.self = globalThis;
      globalThis.XMLHttpRequest = XMLHttpRequestPolyfill;
      const phoenix17 = await import("phoenix-1.7");
      return { SocketClass: phoenix17.Socket, transport: phoenix17.LongPoll };
    },
  ],
]) {
  describe(`notifications over LongPoll, ${name}`, () => {
    let opts;
    before(async () => {
      opts = await load();
    });
    after(() => {
      delete globalThis.XMLHttpRequest;
    });
    it("runs the whole event table with a WebSocket client", async () => {
      const alice = await connect(poller(await tako.register("LpAlice"), opts));
      assert.equal(alice.transport, opts.transport);
      const bob = await connect(makeSocket(tako, { userToken: await tako.register("WsBob") }));
      for (const topic of ["notifications", "notifications:scans"]) {
        const a = await join(alice, topic);
        const b = await join(bob, topic);
        const aCollected = collect(a, "collected-broadcast");
        const bCollected = collect(b, "collected-broadcast");
        const aCompleted = collect(a, "rally-completed");
        const aShout = collect(a, "shout");
        const bShout = collect(b, "shout");
        const aPing = collect(a, "ping");

        assert.equal((await push(a, "collected", { nickname: "LpAlice" }))[0], "ok");
        await eventually(() => aCollected.length === 1 && bCollected.length === 1, "collected-broadcast to both");
        assert.deepEqual(bCollected[0], { nickname: "LpAlice" });

        await push(b, "rally-completed", { nickname: "WsBob" });
        await eventually(() => aCompleted.length === 1, "rally-completed over LongPoll");
        assert.deepEqual(aCompleted[0], { nickname: "WsBob" });

        assert.deepEqual(await push(a, "ping", { hello: "tako", n: [1, 2] }), ["ok", { hello: "tako", n: [1, 2] }]);
        await push(a, "shout", { body: "hi all" });
        await eventually(() => aShout.length === 1 && bShout.length === 1, "shout");
        assert.deepEqual(bShout[0], { body: "hi all" });
        // pong gets no reply (a short push timeout, so no timer outlives the test).
        const pong = await new Promise((resolve) =>
          a.push("pong", {}, 300).receive("ok", () => resolve("ok")).receive("error", () => resolve("error")).receive("timeout", () => resolve("none")),
        );
        assert.equal(pong, "none");

        // Several pushes in one tick travel as one ndjson batch and are answered in order.
        const replies = await Promise.all([1, 2, 3, 4, 5].map((n) => push(a, "ping", { n })));
        assert.deepEqual(replies.map(([, r]) => r.n), [1, 2, 3, 4, 5]);

        // Bad input: error replies, channel stays joined.
        assert.equal((await push(a, "collected", {}))[0], "error");
        assert.deepEqual(await push(a, "no-such-event", {}), ["error", { reason: "unknown event" }]);
        assert.equal(a.state, "joined");

        // The server-wide ping (operators') reaches LongPoll clients too.
        assert.equal(aPing.length, 0);
      }
      await assert.rejects(join(alice, "room:lobby"), /unmatched topic/);
      alice.disconnect();
      bob.disconnect();
    });
  });
}

describe("LongPoll sessions", () => {
  it("an unknown user is refused with 403 and the client stops", async () => {
    const socket = poller("681adb8b-be3d-4fca-8858-2827609d9b22");
    await assert.rejects(connect(socket));
    const res = await fetch(`${tako.url}/socket/longpoll?vsn=2.0.0&userToken=nope`);
    assert.deepEqual(await res.json(), { status: 403 });
  });

  it("presence works over LongPoll", async () => {
    const id = await tako.register("LpPresent");
    const socket = await connect(poller(id));
    const channel = socket.channel("notifications", { presence: "full" });
    const presence = new Presence(channel);
    await new Promise((resolve, reject) => channel.join().receive("ok", resolve).receive("error", reject));
    await eventually(() => presence.list((_k, { metas }) => metas[0].nickname).includes("LpPresent"), "listed");
    socket.disconnect();
  });

  it("the client reconnects with a new session when its session is gone (410)", async () => {
    const socket = await connect(poller(await tako.register("LpRestart")));
    const channel = await join(socket, "notifications");
    await tako.restart();
    await eventually(() => socket.isConnected() && channel.state === "joined", "new session and rejoin", 10000);
    assert.deepEqual(await push(channel, "ping", { again: true }), ["ok", { again: true }]);
    socket.disconnect();
  });
});

/** A WebSocket whose upgrade the network refuses (a proxy answering 404). */
class RefusedWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url.replace("/socket/websocket", "/no-websockets-here/websocket"), protocols);
  }
}

describe("fallback from WebSocket to LongPoll", () => {
  it("falls back when the WebSocket is refused", async () => {
    const socket = makeSocket(tako, { userToken: await tako.register("Fallback_R") }, { transport: RefusedWebSocket, longPollFallbackMs: 2000 });
    const errors = [];
    socket.onError((e) => errors.push(e));
    socket.connect();
    await eventually(() => socket.transport === LongPoll && socket.isConnected(), "connected over LongPoll");
    assert.ok(errors.length >= 1, "the refused WebSocket was an error");
    const channel = await join(socket, "notifications");
    assert.deepEqual(await push(channel, "ping", { via: "longpoll" }), ["ok", { via: "longpoll" }]);
    socket.disconnect();
  });

  it("falls back when the WebSocket never answers", async () => {
    // A TCP server that accepts and stays silent: the upgrade hangs.
    const accepted = [];
    const silent = createServer((conn) => accepted.push(conn));
    await new Promise((r) => silent.listen(0, "127.0.0.1", r));
    const port = silent.address().port;
    class HangingWebSocket extends WebSocket {
      constructor(url, protocols) {
        super(url.replace(/^ws:\/\/[^/]+/, `ws://127.0.0.1:${port}`), protocols);
      }
    }
    const socket = makeSocket(tako, { userToken: await tako.register("Fallback_H") }, { transport: HangingWebSocket, longPollFallbackMs: 300 });
    socket.connect();
    await eventually(() => socket.transport === LongPoll && socket.isConnected(), "connected over LongPoll");
    const channel = await join(socket, "notifications");
    const bob = await connect(makeSocket(tako, { userToken: await tako.register("Fallback_W") }));
    const b = await join(bob, "notifications");
    const got = collect(channel, "collected-broadcast");
    await push(b, "collected", { nickname: "Fallback_W" });
    await eventually(() => got.length === 1, "broadcast reaches the fallen-back client");
    socket.disconnect();
    bob.disconnect();
    for (const conn of accepted) conn.destroy();
    silent.close();
  });
});
