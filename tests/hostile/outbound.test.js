// Issue 12: "One non-reading socket holds ~1 GiB", "A slow consumer never gets the promised
// 1013", and the inbound flood (20 × 1 MiB shouts a second from one socket).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  MiB,
  TEXT,
  assertSurvived,
  fds,
  frame,
  honest,
  mb,
  rawJoin,
  rawSocket,
  sleep,
  startTako,
  watchRss,
  wsClient,
} from "./helpers.js";

const SHOUT = "x".repeat(1_000_000); // a v2 shout of ~1 MB fits the default 1 MiB frame limit

/** A ~1 MB shout as a masked text frame, ready to write (masking 1 MB in JS takes a while). */
function shoutFrame(topic, i) {
  return frame(TEXT, Buffer.from(JSON.stringify([null, String(i), topic, "shout", { text: SHOUT, i }])));
}

/**
 * Sends `total` shouts to `topic` round-robin from `shouters` (raw sockets, members of the
 * topic), each only once every reader in `pace` is at most `ahead` shouts behind, so honest
 * readers are never slow consumers themselves. Resolves with the number sent.
 */
async function shout(topic, shouters, pace, total, ahead = 2) {
  let sent = 0;
  for (; sent < total; sent++) {
    const deadline = Date.now() + 10000;
    while (pace.some((r) => r.bigFrames < sent - ahead) && Date.now() < deadline) await sleep(2);
    const s = shouters[sent % shouters.length];
    if (s.closeCode !== null) break;
    if (!s.send(shoutFrame(topic, sent))) await new Promise((r) => s.sock.once("drain", r));
  }
  return sent;
}

test("a socket that stops reading while 200 MB of shouts go to its topic: RSS < 160 MiB, it is disconnected, readers get every shout", async (t) => {
  // No inbound budget here: the shouters are not the attack, the reader that never reads is.
  const server = await startTako({ TAKO_SOCKET_RATE: "0", TAKO_SOCKET_BYTES_PER_SECOND: "0" });
  try {
    const topic = "notifications:stage";
    const h = await honest(server);
    const members = [];
    for (let i = 0; i < 3; i++) {
      const m = await rawSocket(server, await server.register());
      assert.equal(await rawJoin(m, topic), "ok");
      members.push(m);
    }
    const idle = await rawSocket(server, await server.register());
    assert.equal(await rawJoin(idle, topic), "ok");
    idle.sock.pause(); // from here on, it reads nothing
    const fdsBefore = fds(server.pid);

    const watch = watchRss(server.pid);
    h.startTicking(250);
    const total = 200;
    const sent = await shout(topic, members.slice(0, 2), members, total);
    const deadline = Date.now() + 20000;
    while (members.some((m) => m.bigFrames < sent) && Date.now() < deadline) await sleep(50);
    h.stopTicking();
    const peak = watch.stop();
    t.diagnostic(
      `sent ${sent}; members got ${members.map((m) => m.bigFrames)}; members closed ${members.map((m) => m.closeCode)}; ` +
        `peak RSS ${mb(peak)}; fds ${fdsBefore} → ${fds(server.pid)}; honest ticks ${h.ticksReceived()}/${h.sent}`,
    );
    assert.equal(sent, total);
    for (const m of members) assert.equal(m.bigFrames, total, "every reading member got every shout");
    assert.ok(h.ticksReceived() >= h.sent / 2, "the honest client kept receiving");

    // The idle socket reads again: what the kernel held, then the end of the connection.
    idle.sock.resume();
    const ended = await Promise.race([idle.ended, sleep(10000).then(() => null)]);
    t.diagnostic(`idle socket: ${idle.bigFrames} shouts, ${mb(idle.bytesIn)}, close frame ${idle.closeCode}`);
    assert.ok(ended, "the non-reading socket was disconnected");
    assert.ok(idle.bigFrames < total / 2, `the non-reader was sent ${idle.bigFrames} shouts before it was cut`);
    await assertSurvived(t, assert, server, h, { peak, rssBound: 160 * MiB, label: "non-reader" });
    h.close();
  } finally {
    await server.cleanup();
  }
});

/** The server's count of sockets cut off as slow consumers, read from /metrics. */
async function slowConsumerDisconnects(server) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split("\n").find((l) => /^\w*slow_consumer_disconnects\w*\s/.test(l));
  assert.ok(line, "/metrics counts slow consumers");
  return Number(line.split(/\s+/)[1]);
}

test("a slow consumer that reads again after falling 1 MiB behind gets the 1013 close frame, not a 1006", async (t) => {
  // A 1 MiB budget: two queued shouts make a slow consumer, however fast the machine is.
  const server = await startTako({ TAKO_SOCKET_RATE: "0", TAKO_SOCKET_BYTES_PER_SECOND: "0", TAKO_MAX_QUEUED_BYTES: String(MiB) });
  try {
    const topic = "notifications:slow";
    const total = 60;
    const h = await honest(server);
    const watch = watchRss(server.pid);
    const slow = await rawSocket(server, await server.register());
    assert.equal(await rawJoin(slow, topic), "ok");
    slow.sock.pause();
    const shouter = await rawSocket(server, await server.register());
    assert.equal(await rawJoin(shouter, topic), "ok");
    const shouting = shout(topic, [shouter], [shouter], total, 20);
    // The consumer reads nothing until the server has given up on it, then reads again: the
    // server gives the frame it was writing 2 s to finish, so that the close frame follows it
    // on a frame boundary. (A reader that stays silent is cut off without one: the test above.)
    const started = Date.now();
    while ((await slowConsumerDisconnects(server)) < 1 && Date.now() < started + 20000) await sleep(20);
    const cutAfter = Date.now() - started;
    slow.sock.resume();
    const sent = await shouting;
    const ended = await Promise.race([slow.ended, sleep(15000).then(() => null)]);
    t.diagnostic(
      `sent ${sent}; slow consumer cut off after ${cutAfter} ms, got ${slow.bigFrames} shouts, close frame ${slow.closeCode}`,
    );
    assert.ok(ended, "the slow consumer was disconnected");
    assert.ok(slow.bigFrames < total / 2, `the slow consumer was sent ${slow.bigFrames} shouts before it was cut`);
    assert.equal(slow.closeCode, 1013, "a close frame with 1013 ended its stream");
    await assertSurvived(t, assert, server, h, { peak: watch.stop(), rssBound: 100 * MiB, label: "slow consumer" });
    h.close();
  } finally {
    await server.cleanup();
  }
});

test("inbound flood: 20 × 1 MB shouts a second from one socket for 5 s are not all fanned out; RSS < 160 MiB", async (t) => {
  const server = await startTako();
  try {
    const topic = "notifications:flood";
    const h = await honest(server);
    const members = [];
    for (let i = 0; i < 5; i++) {
      const m = await wsClient(server, await server.register());
      assert.equal(await m.join(topic), "ok");
      members.push(m);
    }
    const flooder = await wsClient(server, await server.register());
    assert.equal(await flooder.join(topic), "ok");
    const watch = watchRss(server.pid);
    h.startTicking(250);
    let sent = 0;
    const start = Date.now();
    while (Date.now() - start < 5000 && flooder.closeCode === null) {
      flooder.push(topic, "shout", { text: SHOUT, i: sent++ });
      const due = start + sent * 50; // 20 a second
      await sleep(Math.max(0, due - Date.now()));
    }
    await sleep(1500);
    h.stopTicking();
    const peak = watch.stop();
    const fanned = Math.max(...members.map((m) => m.counts.shout || 0));
    t.diagnostic(
      `flooder sent ${sent}, members got ${fanned}, refused ${flooder.errors.length} (${[...new Set(flooder.errors)]}), ` +
        `flooder close ${flooder.closeCode}; honest ticks ${h.ticksReceived()}/${h.sent}`,
    );
    assert.ok(fanned < sent / 2, `${fanned} of ${sent} MB-sized shouts were fanned out to everyone`);
    assert.ok(flooder.errors.length > 0 || flooder.closeCode === 1008, "the flooder is told no (error replies or 1008)");
    assert.ok(h.ticksReceived() >= h.sent / 2, "the honest client kept receiving during the flood");
    await assertSurvived(t, assert, server, h, { peak, rssBound: 160 * MiB, label: "inbound flood" });
    for (const m of [...members, flooder]) m.close();
    h.close();
  } finally {
    await server.cleanup();
  }
});
