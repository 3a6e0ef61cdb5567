// The HoloQuest flows, end to end, with the official phoenix client against the real server.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Socket as Socket17 } from "phoenix-1.7";
import { collect, connect, upgradeStatus, eventually, join, makeSocket, push, sleep, startTako, v1 } from "./helpers.js";

let tako;
before(async () => {
  tako = await startTako();
});
after(async () => {
  await tako.cleanup();
});

describe("socket auth", () => {
  it("connects a registered user and refuses an unknown one with 403", async () => {
    const id = await tako.register("Auth_OK");
    const socket = await connect(makeSocket(tako, { userToken: id }));
    assert.ok(socket.isConnected());
    socket.disconnect();

    const stranger = makeSocket(tako, { userToken: "681adb8b-be3d-4fca-8858-2827609d9b22" });
    await assert.rejects(connect(stranger));
    const garbage = makeSocket(tako, { userToken: "not-a-uuid" });
    await assert.rejects(connect(garbage));
    // The upgrade itself answers 403, as Phoenix does.
    assert.equal(await upgradeStatus(tako, "/socket/websocket?userToken=nope&vsn=2.0.0"), 403);
  });

  it("accepts the seed README's user_id param and the 1.8 auth-token subprotocol", async () => {
    const id = await tako.register("Auth_Alt");
    const byParam = await connect(makeSocket(tako, { user_id: id }));
    byParam.disconnect();
    const byProtocol = await connect(makeSocket(tako, {}, { authToken: id }));
    const channel = await join(byProtocol, "notifications");
    assert.deepEqual(await push(channel, "ping", { n: 1 }), ["ok", { n: 1 }]);
    byProtocol.disconnect();
    await assert.rejects(connect(makeSocket(tako, {}, { authToken: "681adb8b-be3d-4fca-8858-2827609d9b22" })));
  });
});

for (const [name, opts] of [
  ["v2 (phoenix 1.8)", {}],
  ["v1 (vsn 1.0.0)", v1],
  ["phoenix 1.7 client", { SocketClass: Socket17 }],
]) {
  describe(`notifications events, ${name}`, () => {
    it("runs the whole event table between two clients", async () => {
      const alice = await connect(makeSocket(tako, { userToken: await tako.register("Alice") }, opts));
      const bob = await connect(makeSocket(tako, { userToken: await tako.register("Bob") }, opts));
      for (const topic of ["notifications", "notifications:scans"]) {
        const a = await join(alice, topic);
        const b = await join(bob, topic);
        const aCollected = collect(a, "collected-broadcast");
        const bCollected = collect(b, "collected-broadcast");
        const bCompleted = collect(b, "rally-completed");
        const aShout = collect(a, "shout");
        const bShout = collect(b, "shout");

        assert.equal((await push(a, "collected", { nickname: "Alice" }))[0], "ok");
        await eventually(() => aCollected.length === 1 && bCollected.length === 1, "collected-broadcast to both");
        assert.deepEqual(bCollected[0], { nickname: "Alice" });
        assert.deepEqual(aCollected[0], { nickname: "Alice" }, "the sender hears it too");

        await push(a, "rally-completed", { nickname: "Alice" });
        await eventually(() => bCompleted.length === 1, "rally-completed");
        assert.deepEqual(bCompleted[0], { nickname: "Alice" });

        assert.deepEqual(await push(b, "ping", { hello: "tako", n: [1, 2] }), ["ok", { hello: "tako", n: [1, 2] }]);

        await push(b, "shout", { body: "hi all", from: "Bob" });
        await eventually(() => aShout.length === 1 && bShout.length === 1, "shout");
        assert.deepEqual(aShout[0], { body: "hi all", from: "Bob" });

        // pong gets no reply, and nothing breaks.
        assert.deepEqual(await Promise.race([push(a, "pong", {}), sleep(300).then(() => ["none"])]), ["none"]);

        // Bad input: error replies, channel stays joined.
        const [status, response] = await push(a, "collected", {});
        assert.equal(status, "error");
        assert.ok(typeof response.reason === "string");
        assert.equal((await push(a, "collected", { nickname: 42 }))[0], "error");
        assert.deepEqual(await push(a, "no-such-event", {}), ["error", { reason: "unknown event" }]);
        assert.deepEqual(await push(a, "ping", { still: "joined" }), ["ok", { still: "joined" }]);
        assert.equal(a.state, "joined");
      }
      alice.disconnect();
      bob.disconnect();
    });
  });
}

describe("topics are separate audiences", () => {
  it("a broadcast on notifications:scans does not reach notifications", async () => {
    const alice = await connect(makeSocket(tako, { userToken: await tako.register("Aud_A") }));
    const bob = await connect(makeSocket(tako, { userToken: await tako.register("Aud_B") }));
    const aScans = await join(alice, "notifications:scans");
    const bPlain = await join(bob, "notifications");
    const bGot = collect(bPlain, "collected-broadcast");
    const aGot = collect(aScans, "collected-broadcast");
    await push(aScans, "collected", { nickname: "Aud_A" });
    await eventually(() => aGot.length === 1, "own broadcast");
    await sleep(200);
    assert.equal(bGot.length, 0);
    // A topic no channel runs is refused.
    await assert.rejects(join(alice, "room:lobby"), /unmatched topic/);
    alice.disconnect();
    bob.disconnect();
  });
});

describe("server restart", () => {
  it("the client reconnects and rejoins by itself", async () => {
    const id = await tako.register("Phoenix_Rises");
    const watcher = await tako.register("Watcher");
    const socket = await connect(makeSocket(tako, { userToken: id }));
    const channel = await join(socket, "notifications");
    const got = collect(channel, "collected-broadcast");
    const closes = [];
    socket.onClose((e) => closes.push(e?.code));

    await tako.restart();
    await eventually(() => closes.includes(1001), `close 1001 on shutdown (got ${closes})`);
    await eventually(() => socket.isConnected() && channel.state === "joined", "reconnect and rejoin", 10000);

    const other = await connect(makeSocket(tako, { userToken: watcher }));
    const otherChannel = await join(other, "notifications");
    await push(otherChannel, "collected", { nickname: "Watcher" });
    await eventually(() => got.length === 1, "broadcast after the restart");
    socket.disconnect();
    other.disconnect();
  });

  it("exits 0 on SIGTERM", async () => {
    const code = await tako.stop();
    assert.equal(code, 0);
    await tako.start();
  });
});
