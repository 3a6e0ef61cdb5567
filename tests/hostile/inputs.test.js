// Issue 12 on what clients say: 1 MB topic names and /metrics, a spoofed X-Forwarded-For, a
// user's UUID in non-canonical spellings reaching the log, settings that make no sense.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join as pathJoin } from "node:path";
import { MiB, TAKO_BIN, assertSurvived, freePort, honest, mb, message, rawSocket, sleep, startTako, watchRss } from "./helpers.js";

/** A join's reply status, or "closed" when the socket was closed instead. */
async function tryJoin(client, topic, ref, payload = {}) {
  if (client.closeCode !== null) return "closed";
  client.text([ref, ref, topic, "phx_join", payload]);
  const reply = await Promise.race([
    client.waitFrame((f) => {
      const m = message(f);
      return (m && m[1] === ref && m[3] === "phx_reply") || f.opcode === 8;
    }, 10000),
    client.ended.then(() => null),
  ]).catch(() => null);
  const m = reply && message(reply);
  return m ? m[4].status : "closed";
}

test("1 MB topic names and 16+ KiB join payloads are refused; /metrics stays small (< 256 KiB); RSS < 150 MiB", async (t) => {
  const server = await startTako();
  try {
    const h = await honest(server);
    const watch = watchRss(server.pid);
    const outcomes = {};
    const count = (k) => (outcomes[k] = (outcomes[k] || 0) + 1);
    const attackers = [];
    const stopAt = Date.now() + 20000; // a server that accepts them takes long: 20 s of it is plenty
    for (let s = 0; s < 5 && Date.now() < stopAt; s++) {
      const attacker = await rawSocket(server, await server.register(), { keepBig: true });
      for (let i = 0; i < 20 && Date.now() < stopAt; i++) {
        const topic = `notifications:${String(s * 100 + i).padStart(4, "0")}${"x".repeat(1_000_000)}`;
        count(await tryJoin(attacker, topic, `${i + 1}`));
      }
      attackers.push(attacker); // kept joined until /metrics was read
    }
    // Many distinct topics of a legal length: label cardinality of /metrics stays bounded.
    const many = await rawSocket(server, await server.register());
    const legal = {};
    for (let i = 0; i < 90; i++) {
      const status = await tryJoin(many, `notifications:${i}:${"y".repeat(200)}`, `${i + 1}`);
      legal[status] = (legal[status] || 0) + 1;
    }
    const bigPayload = await rawSocket(server, await server.register());
    const payloadStatus = await tryJoin(bigPayload, "notifications:payload", "1", { blob: "z".repeat(100 * 1024) });
    const res = await fetch(`${server.url}/metrics`);
    const metrics = await res.text();
    const peak = watch.stop();
    attackers.forEach((a) => a.destroy());
    t.diagnostic(
      `1 MB topics: ${JSON.stringify(outcomes)}; 214-byte topics: ${JSON.stringify(legal)}; 100 KiB join payload: ` +
        `${payloadStatus}; /metrics ${res.status} ${(metrics.length / 1024).toFixed(1)} KiB; peak RSS ${mb(peak)}`,
    );
    assert.equal(outcomes.ok, undefined, "no 1 MB topic was joined");
    assert.notEqual(payloadStatus, "ok", "a 100 KiB join payload was refused");
    assert.equal(res.status, 200);
    assert.ok(metrics.length < 256 * 1024, `/metrics is ${(metrics.length / 1024).toFixed(1)} KiB`);
    await assertSurvived(t, assert, server, h, { peak, rssBound: 150 * MiB, label: "long topics" });
    h.close();
  } finally {
    await server.cleanup();
  }
});

test("TAKO_TRUST_PROXY: a client writing `X-Forwarded-For: 127.0.0.1, …` gets no loopback exemption", async (t) => {
  const server = await startTako({
    TAKO_TRUST_PROXY: "on",
    TAKO_REGISTRATIONS_PER_MINUTE: "2",
    TAKO_MAX_CONNECTIONS_PER_IP: "2",
  });
  try {
    // The proxy (our loopback peer) appended the real client, 203.0.113.9; the client wrote the rest.
    const xff = "127.0.0.1, ::1, 203.0.113.9";
    const statuses = [];
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${server.url}/api/json/accounts/users/`, {
        method: "POST",
        headers: { "content-type": "application/vnd.api+json", "x-forwarded-for": xff },
        body: '{"data":{"type":"user","attributes":{}}}',
      });
      statuses.push(res.status);
    }
    const token = await server.register(); // the proxy's own address: loopback, exempt
    const upgrades = [];
    const sockets = [];
    for (let i = 0; i < 4; i++) {
      try {
        sockets.push(await rawSocket(server, token, { headers: { "X-Forwarded-For": xff } }));
        upgrades.push(101);
      } catch (e) {
        upgrades.push(e.message.replace("upgrade refused: ", ""));
      }
    }
    t.diagnostic(`registrations: ${statuses}; upgrades: ${upgrades}`);
    assert.deepEqual(statuses.slice(0, 2), [201, 201]);
    assert.deepEqual(statuses.slice(2), [429, 429, 429], "the third registration a minute from 203.0.113.9 is refused");
    assert.deepEqual(upgrades.slice(0, 2), [101, 101]);
    assert.ok(upgrades.slice(2).every((u) => /429/.test(u)), "the third socket from 203.0.113.9 is refused");
    sockets.forEach((s) => s.destroy());
  } finally {
    await server.cleanup();
  }
});

test("a user's UUID never reaches the log, whatever its spelling in the path", async (t) => {
  const server = await startTako({ TAKO_LOG: "info" });
  try {
    const id = await server.register();
    const hex = id.replace(/-/g, "");
    const first = `%${id.charCodeAt(0).toString(16)}${id.slice(1)}`;
    const paths = [
      `%7B${id}%7D`,
      `{${id}}`,
      first,
      id.toUpperCase(),
      hex,
      `urn:uuid:${id}`,
      id.split("").map((c) => `%${c.charCodeAt(0).toString(16)}`).join(""),
      `${id}/extra`,
    ];
    const statuses = [];
    for (const p of paths) {
      const res = await fetch(`${server.url}/api/json/accounts/users/${p}`);
      statuses.push(res.status);
    }
    // And as a LongPoll / socket token in the query, and in a 404 path.
    await fetch(`${server.url}/socket/longpoll?vsn=2.0.0&userToken=${id}`);
    await fetch(`${server.url}/no/such/${id.toUpperCase()}`);
    await sleep(300);
    t.diagnostic(`statuses: ${statuses}`);
    // Whatever the spelling: percent-decoded, lower-cased, separators dropped.
    const decoded = server.output.replace(/%([0-9a-f]{2})/gi, (_, h) => String.fromCharCode(parseInt(h, 16)));
    const squashed = decoded.toLowerCase().replace(/[^0-9a-f\n]/g, "");
    const leaks = server.output
      .split("\n")
      .filter((line, i) => squashed.split("\n")[i]?.includes(hex));
    assert.ok(server.output.length > 0, "the server logged the requests");
    assert.deepEqual(leaks, [], "log lines holding the user's UUID");
  } finally {
    await server.cleanup();
  }
});

/** Runs tako with `env`; resolves with its exit code and output, or "running" after `ms`. */
function startExpectingRefusal(env, ms = 8000) {
  return new Promise(async (resolve) => {
    const dir = mkdtempSync(pathJoin(tmpdir(), "tako-hostile-"));
    const port = await freePort();
    const proc = spawn(TAKO_BIN, [], {
      env: { ...process.env, PORT: String(port), DATABASE_URL: `sqlite://${pathJoin(dir, "t.db")}`, TAKO_LOG: "warn", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    proc.stdout.on("data", (d) => (output += d));
    proc.stderr.on("data", (d) => (output += d));
    const running = () => {
      proc.kill("SIGKILL");
      resolve({ code: "running", output });
    };
    const timer = setTimeout(running, ms);
    // Serving: no need to wait any longer.
    const poll = setInterval(async () => {
      try {
        if ((await fetch(`http://127.0.0.1:${port}/healthz`)).status === 200) running();
      } catch {}
    }, 100);
    proc.on("exit", (code) => {
      clearTimeout(timer);
      clearInterval(poll);
      rmSync(dir, { recursive: true, force: true });
      resolve({ code, output });
    });
  });
}

for (const [name, value, mention] of [
  ["TAKO_HEARTBEAT_TIMEOUT", "0", /heartbeat/i],
  ["TAKO_MAX_FRAME_BYTES", "0", /frame/i],
  ["TAKO_HEARTBEAT_TIMEOUT", "-5", /heartbeat/i],
  ["TAKO_MAX_QUEUED_BYTES", "0", /queued/i],
  ["TAKO_HEADER_TIMEOUT", "0", /header/i],
]) {
  test(`${name}=${value} is refused at start with a clear message`, async (t) => {
    const { code, output } = await startExpectingRefusal({ [name]: value });
    t.diagnostic(`exit ${code}: ${output.trim().split("\n").slice(-2).join(" | ").slice(0, 300)}`);
    assert.notEqual(code, "running", "the server started");
    assert.notEqual(code, 0);
    assert.match(output, mention, "the message names the setting");
  });
}
