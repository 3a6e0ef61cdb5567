// Issue 12 on the HTTP listener: slowloris, invalid Sec-WebSocket-Key values, /readyz during
// SIGTERM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect as tcpConnect } from "node:net";
import { MiB, assertSurvived, crashLines, fds, healthz, honest, mb, rawSocket, sleep, startTako, watchRss } from "./helpers.js";

/** A TCP connection that sent `head` and nothing more; `closedAt` is set when the server closes it. */
function stalled(server, head) {
  return new Promise((resolve) => {
    const c = { closedAt: null, opened: Date.now() };
    const sock = tcpConnect(server.port, "127.0.0.1", () => {
      sock.write(head);
      resolve(c);
    });
    c.sock = sock;
    sock.on("error", () => {});
    sock.on("data", () => {});
    sock.on("close", () => {
      c.closedAt = Date.now();
      resolve(c);
    });
  });
}

test("slowloris: 400 stalled partial requests with 256 fds are closed within the header timeout; /healthz and sockets keep working", async (t) => {
  const server = await startTako({ TAKO_HEADER_TIMEOUT: "2" }, { prefix: ["prlimit", "--nofile=256:256"] });
  try {
    const h = await honest(server);
    const watch = watchRss(server.pid);
    const head = `GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n`;
    const conns = [];
    for (let i = 0; i < 400; i++) conns.push(await stalled(server, head));
    // A few more that trickle one header byte every 500 ms: the timeout is on the whole head.
    const tricklers = [];
    for (let i = 0; i < 10; i++) {
      const c = await stalled(server, "GET /healthz HTTP/1.1\r\n");
      c.timer = setInterval(() => c.sock.write("X"), 500);
      tricklers.push(c);
    }
    const start = Date.now();
    const answers = [];
    let maxFds = 0;
    const timings = [];
    while (Date.now() - start < 6000) {
      const asked = Date.now();
      answers.push(await healthz(server, 2000));
      timings.push(`${answers.at(-1)}@${((asked - start) / 1000).toFixed(1)}s+${Date.now() - asked}ms`);
      maxFds = Math.max(maxFds, fds(server.pid));
      await sleep(200);
    }
    tricklers.forEach((c) => clearInterval(c.timer));
    const open = conns.filter((c) => c.closedAt === null).length;
    const trickling = tricklers.filter((c) => c.closedAt === null).length;
    const bad = answers.filter((a) => a !== 200);
    t.diagnostic(
      `stalled still open after 6 s: ${open}/400, tricklers open: ${trickling}/10; /healthz: ${answers.length - bad.length} ok, ` +
        `${bad.length} not (${[...new Set(bad)]}); server fds peak ${maxFds}`,
    );
    assert.equal(open, 0, "every stalled request was closed within the 2 s header timeout (+ slack)");
    assert.equal(trickling, 0, "a request trickling bytes is closed on the same timeout");
    if (bad.length) t.diagnostic(`/healthz: ${timings.join(" ")}`);
    assert.equal(bad.length, 0, "/healthz answered every time (within 2 s)");
    const emfile = server.output.split("\n").filter((l) => /Too many open files/.test(l));
    if (emfile.length) t.diagnostic(`${emfile.length} accept errors, first: ${emfile[0].replace(/\x1b\[[0-9;]*m/g, "")}`);
    assert.equal(emfile.length, 0, "no accept error from fd exhaustion (the connection cap stays under the fd limit)");
    await assertSurvived(t, assert, server, h, { peak: watch.stop(), rssBound: 100 * MiB, label: "slowloris" });
    conns.forEach((c) => c.sock.destroy());
    h.close();
  } finally {
    await server.cleanup();
  }
});

/** The status line of a WebSocket upgrade with `key` (null: no key header at all). */
function upgradeWithKey(server, token, key) {
  return new Promise((resolve) => {
    const sock = tcpConnect(server.port, "127.0.0.1");
    let got = "";
    sock.on("error", (e) => resolve(e.code));
    sock.on("data", (d) => {
      got += d;
      const line = got.split("\r\n")[0];
      if (got.includes("\r\n")) {
        sock.destroy();
        resolve(Number(line.split(" ")[1]));
      }
    });
    sock.on("close", () => resolve(got ? Number(got.split(" ")[1]) : "closed"));
    sock.write(
      `GET /socket/websocket?vsn=2.0.0&userToken=${token} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
        `Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n` +
        (key === null ? "" : `Sec-WebSocket-Key: ${key}\r\n`) +
        "\r\n",
    );
  });
}

test("an invalid Sec-WebSocket-Key gets 400: empty, not base64, 10 KB, not 16 bytes", async (t) => {
  const server = await startTako();
  try {
    const h = await honest(server);
    const watch = watchRss(server.pid);
    const token = await server.register();
    assert.equal(await upgradeWithKey(server, token, "dGhlIHNhbXBsZSBub25jZQ=="), 101, "a valid key upgrades");
    const cases = {
      empty: "",
      "not base64": "not base64 at all!!",
      "10 KB": "A".repeat(10 * 1024),
      "12 bytes": Buffer.alloc(12, 7).toString("base64"),
      missing: null,
    };
    const got = {};
    for (const [name, key] of Object.entries(cases)) got[name] = await upgradeWithKey(server, token, key);
    t.diagnostic(JSON.stringify(got));
    for (const name of Object.keys(cases)) assert.equal(got[name], 400, `${name} key`);
    await assertSurvived(t, assert, server, h, { peak: watch.stop(), rssBound: 100 * MiB, label: "bad keys" });
    h.close();
  } finally {
    await server.cleanup();
  }
});

test("during SIGTERM /readyz answers 503 (not a reset) until the server is gone", async (t) => {
  const server = await startTako({ TAKO_SHUTDOWN_TIMEOUT: "5" });
  try {
    assert.equal(await healthz(server, 2000, "/readyz"), 200);
    // A socket that reads nothing keeps the closing handshake busy for its grace, and a
    // request whose body is still coming is a request in flight the shutdown waits for.
    const idle = await rawSocket(server, await server.register());
    idle.sock.pause();
    const body = '{"data":{"type":"user","attributes":{"nickname":"Slow_Body"}}}';
    const inFlight = await stalled(
      server,
      `POST /api/json/accounts/users/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/vnd.api+json\r\n` +
        `Content-Length: ${body.length}\r\n\r\n${body.slice(0, 10)}`,
    );
    let sentBody = 10;
    const trickle = setInterval(() => {
      if (sentBody < body.length) inFlight.sock.write(body[sentBody++]);
    }, 100);
    await sleep(200);
    server.proc.kill("SIGTERM");
    const seen = [];
    while (server.alive()) {
      const answer = await healthz(server, 2000, "/readyz");
      seen.push([answer, server.alive()]);
      await sleep(20);
    }
    clearInterval(trickle);
    const whileUp = seen.filter(([, alive]) => alive).map(([a]) => a);
    t.diagnostic(`answers while the process lived: ${JSON.stringify(whileUp.slice(0, 30))} (${whileUp.length})`);
    assert.equal((await server.exited).code, 0, crashLines(server.output));
    // The signal takes a moment to arrive: 200s first, then 503s while it drains, then (once
    // drained) the listener may close before the process exits. Never a reset in the middle.
    const first503 = whileUp.indexOf(503);
    assert.ok(first503 >= 0, "/readyz said 503");
    const draining = whileUp.slice(first503);
    const firstError = draining.findIndex((a) => typeof a !== "number");
    const answered = firstError < 0 ? draining : draining.slice(0, firstError);
    const after = firstError < 0 ? [] : draining.slice(firstError);
    assert.ok(answered.every((a) => a === 503), `only 503 once draining: ${answered}`);
    assert.ok(answered.length >= 3, "503 for as long as a request was in flight");
    assert.ok(after.every((a) => typeof a !== "number"), `no answer after the listener closed: ${after}`);
    assert.ok(whileUp.slice(0, first503).every((a) => a === 200), "before the signal landed: 200");
  } finally {
    await server.cleanup();
  }
});
