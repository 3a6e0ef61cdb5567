// Operators' messages as a HoloQuest client sees them: `msg` only for its user, and messages
// sent while a user is offline arriving when they next join — even across a server restart.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { collect, connect, eventually, join, makeSocket, sleep, startTako, TAKO_BIN } from "./helpers.js";

const ADMIN = "compat-admin-token";
let tako;
before(async () => {
  tako = await startTako({ TAKO_ADMIN_TOKEN: ADMIN, HOLOQUEST_API_TOKEN: "compat-client-token" });
});
after(async () => {
  await tako.cleanup();
});

async function sendMessage(userId, message, extra = {}) {
  const res = await fetch(`${tako.url}/api/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN}` },
    body: JSON.stringify({ user_id: userId, message, ...extra }),
  });
  assert.equal(res.status, 202);
  return res.json();
}

describe("msg", () => {
  it("reaches only its user, on every notifications topic it joined", async () => {
    const aliceId = await tako.register("MsgAlice");
    const bobId = await tako.register("MsgBob");
    const alice = await connect(makeSocket(tako, { userToken: aliceId }));
    const bob = await connect(makeSocket(tako, { userToken: bobId }));
    const aPlain = collect(await join(alice, "notifications"), "msg");
    const aScans = collect(await join(alice, "notifications:scans"), "msg");
    const bPlain = collect(await join(bob, "notifications"), "msg");

    const status = await sendMessage(aliceId, "Testiiing", { prize: "sticker" });
    assert.equal(status.delivered, true);
    await eventually(() => aPlain.length === 1 && aScans.length === 1, "msg on both of Alice's topics");
    assert.equal(aPlain[0].user_id, aliceId);
    assert.equal(aPlain[0].message, "Testiiing");
    assert.equal(aPlain[0].prize, "sticker");
    assert.equal(aPlain[0].id, status.id);
    await sleep(200);
    assert.equal(bPlain.length, 0, "Bob gets nothing");
    alice.disconnect();
    bob.disconnect();
  });

  it("waits for an offline user, across a server restart, and arrives once, in order", async () => {
    const carolId = await tako.register("MsgCarol");
    const first = await sendMessage(carolId, "first");
    const second = await sendMessage(carolId, "second");
    assert.equal(first.delivered, false);
    assert.equal(second.delivered, false);

    await tako.restart();

    const carol = await connect(makeSocket(tako, { userToken: carolId }));
    const channel = await join(carol, "notifications");
    const got = collect(channel, "msg");
    await eventually(() => got.length === 2, "both waiting messages");
    assert.deepEqual(got.map((m) => m.message), ["first", "second"]);
    carol.disconnect();

    // Delivered once: reconnecting brings nothing again.
    const again = await connect(makeSocket(tako, { userToken: carolId }));
    const later = collect(await join(again, "notifications"), "msg");
    await sleep(300);
    assert.equal(later.length, 0);
    again.disconnect();
  });
});

describe("CLI against the live server", () => {
  const run = promisify(execFile);
  const cli = (args, env = {}) =>
    run(TAKO_BIN, args, { env: { ...process.env, TAKO_URL: tako.url, TAKO_ADMIN_TOKEN: ADMIN, ...env } });

  it("creates a user, sends it a message, broadcasts and pings", async () => {
    const { stdout: created } = await cli(["users", "create", "--nickname", "CliUser"]);
    const id = created.trim();
    assert.match(id, /^[0-9a-f-]{36}$/);
    const socket = await connect(makeSocket(tako, { userToken: id }));
    const channel = await join(socket, "notifications");
    const msgs = collect(channel, "msg");
    const news = collect(channel, "news");
    const pings = collect(channel, "ping");

    const { stdout: sent } = await cli(["send", id, "from the booth"]);
    assert.match(sent, /delivered live/);
    await eventually(() => msgs.length === 1, "msg from the CLI");
    assert.equal(msgs[0].message, "from the booth");

    await cli(["broadcast", "notifications", "news", '{"text":"Stage B starts"}']);
    await eventually(() => news.length === 1, "broadcast from the CLI");
    assert.deepEqual(news[0], { text: "Stage B starts" });

    await cli(["ping"]);
    await eventually(() => pings.length === 1, "ping from the CLI");
    assert.deepEqual(pings[0], { msg: "ping" });
    socket.disconnect();

    const { stdout: waiting } = await cli(["send", await tako.register("CliOffline"), "later"]);
    assert.match(waiting, /waits for their next join/);
  });

  it("fails with a clear message and a non-zero exit", async () => {
    await assert.rejects(cli(["send", "not-a-uuid", "x"]), (e) => e.code === 1 && /400/.test(e.stderr));
    await assert.rejects(cli(["ping"], { TAKO_ADMIN_TOKEN: "wrong" }), (e) => e.code === 1 && /401/.test(e.stderr));
    await assert.rejects(cli(["ping"], { TAKO_URL: "http://127.0.0.1:9" }), (e) => e.code === 1 && /cannot reach/.test(e.stderr));
    await assert.rejects(cli(["broadcast", "notifications", "x", "not json"]), (e) => e.code === 1 && /JSON object/.test(e.stderr));
  });
});
