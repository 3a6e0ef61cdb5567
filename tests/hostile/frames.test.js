// Issue 12: "One 14-byte frame kills the whole server." Frame lengths a client announces are
// checked against the limit before anything is reserved, in every state: open, and after the
// server sent its close frame (here: after a 1007 for bad UTF-8) while it waits for the client's.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  BINARY,
  MiB,
  TEXT,
  assertSurvived,
  frame,
  honest,
  hugeHeader,
  mb,
  rawSocket,
  rss,
  sleep,
  startTako,
  watchRss,
} from "./helpers.js";

const RSS_BOUND = 100 * MiB;

/** A raw socket the server is closing: it sent text that is not UTF-8 and got a 1007 close. */
async function closingSocket(server) {
  const attacker = await rawSocket(server, await server.register());
  attacker.send(frame(TEXT, Buffer.from([0xc3, 0x28])));
  await attacker.waitFrame((f) => f.opcode === 8);
  assert.equal(attacker.closeCode, 1007);
  return attacker;
}

for (const [name, length] of [
  ["2^40 bytes", 1n << 40n],
  ["2^63 bytes", 1n << 63n],
  ["2^64 - 1 bytes", (1n << 64n) - 1n],
]) {
  test(`a 14-byte header announcing ${name} after the server's close frame: the server lives (RSS < 100 MiB)`, async (t) => {
    const server = await startTako();
    try {
      const h = await honest(server);
      const watch = watchRss(server.pid);
      const attacker = await closingSocket(server);
      attacker.send(hugeHeader(length));
      const ended = await Promise.race([attacker.ended, sleep(5000).then(() => null)]);
      assert.ok(ended, "the attacker's connection is closed within the close grace");
      await sleep(200);
      await assertSurvived(t, assert, server, h, { peak: watch.stop(), rssBound: RSS_BOUND, label: name });
      h.close();
    } finally {
      await server.cleanup();
    }
  });
}

test("8 GiB announced and streamed during the close grace: memory does not follow (< +64 MiB)", async (t) => {
  const server = await startTako();
  try {
    const h = await honest(server);
    await sleep(300);
    const before = rss(server.pid);
    const watch = watchRss(server.pid);
    const attacker = await closingSocket(server);
    attacker.send(hugeHeader(8n << 30n));
    const chunk = Buffer.alloc(MiB, 0x41);
    let sent = 0;
    let open = true;
    attacker.ended.then(() => (open = false));
    const stopAt = Date.now() + 3000;
    while (open && Date.now() < stopAt) {
      if (!attacker.send(chunk)) await Promise.race([new Promise((r) => attacker.sock.once("drain", r)), attacker.ended]);
      sent += chunk.length;
    }
    const peak = watch.stop();
    t.diagnostic(`streamed ${mb(sent)}; RSS ${mb(before)} → peak ${mb(peak)}; closed: ${!open}`);
    assert.ok(!open || (await Promise.race([attacker.ended, sleep(3000).then(() => null)])), "the attacker is closed");
    assert.ok(peak - before < 64 * MiB, `RSS grew by ${mb(peak - before)}`);
    await assertSurvived(t, assert, server, h, { peak, rssBound: RSS_BOUND, label: "8 GiB streamed" });
    h.close();
  } finally {
    await server.cleanup();
  }
});

test("an open socket announcing 2^40 bytes is closed with 1009 at once; others keep receiving", async (t) => {
  const server = await startTako();
  try {
    const h = await honest(server);
    const watch = watchRss(server.pid);
    const attacker = await rawSocket(server, await server.register());
    attacker.send(hugeHeader(1n << 40n));
    await attacker.waitFrame((f) => f.opcode === 8, 5000);
    assert.equal(attacker.closeCode, 1009);
    await assertSurvived(t, assert, server, h, { peak: watch.stop(), rssBound: RSS_BOUND, label: "open 2^40" });
    h.close();
  } finally {
    await server.cleanup();
  }
});

test("the frame limit applies across fragments (1009), without waiting for the last one", async (t) => {
  const server = await startTako({ TAKO_MAX_FRAME_BYTES: "65536" });
  try {
    const h = await honest(server);
    const watch = watchRss(server.pid);
    const attacker = await rawSocket(server, await server.register());
    attacker.send(frame(BINARY, Buffer.alloc(40000), { fin: false }));
    attacker.send(frame(0, Buffer.alloc(40000), { fin: false }));
    await attacker.waitFrame((f) => f.opcode === 8, 5000);
    assert.equal(attacker.closeCode, 1009);
    await assertSurvived(t, assert, server, h, { peak: watch.stop(), rssBound: RSS_BOUND, label: "fragments" });
    h.close();
  } finally {
    await server.cleanup();
  }
});
