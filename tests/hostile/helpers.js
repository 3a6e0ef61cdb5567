// The attacker's tools against the real `tako` binary: raw TCP WebSocket frames, memory and fd
// readings from /proc, and an honest phoenix client beside the attacker.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { Agent, request } from "node:http";
import { connect as tcpConnect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join as pathJoin } from "node:path";
import { randomBytes } from "node:crypto";
import { Socket } from "phoenix";
import WebSocket from "ws";

export const TAKO_BIN = process.env.TAKO_BIN;
if (!TAKO_BIN) throw new Error("TAKO_BIN must name the tako binary (scripts/test sets it)");

export const MiB = 1 << 20;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

/** VmRSS of a process in bytes (0 once it is gone). */
export function rss(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = /VmRSS:\s+(\d+) kB/.exec(status);
    return kb ? Number(kb[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Open file descriptors of a process. */
export function fds(pid) {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

/** Samples a process's RSS every 50 ms until `stop()`, which returns the peak in bytes. */
export function watchRss(pid) {
  let peak = rss(pid);
  const timer = setInterval(() => (peak = Math.max(peak, rss(pid))), 50);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, rss(pid));
    },
  };
}

const mb = (bytes) => `${(bytes / MiB).toFixed(1)} MiB`;
export { mb };

// Servers still running when the test process exits (a test that timed out never reaches its
// cleanup) are killed with it.
const running = new Map();
process.on("exit", () => {
  for (const [proc, dir] of running) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * A running tako on a fresh SQLite file. `prefix` runs it under another command (e.g.
 * `["prlimit", "--nofile=256"]`). Resolves once `/healthz` answers 200.
 */
export async function startTako(env = {}, { prefix = [] } = {}) {
  const dir = mkdtempSync(pathJoin(tmpdir(), "tako-hostile-"));
  const port = await freePort();
  const server = {
    port,
    url: `http://127.0.0.1:${port}`,
    env: {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: `sqlite://${pathJoin(dir, "tako.db")}`,
      TAKO_LOG: process.env.TAKO_LOG || "warn",
      HOLOQUEST_API_TOKEN: "",
      TAKO_ADMIN_TOKEN: "",
      ...env,
    },
    proc: null,
    output: "",
    exited: null,
    get pid() {
      return this.proc.pid;
    },
    alive() {
      return this.proc.exitCode === null && this.proc.signalCode === null;
    },
    async start() {
      const [cmd, ...args] = [...prefix, TAKO_BIN];
      this.proc = spawn(cmd, args, { env: this.env, stdio: ["ignore", "pipe", "pipe"] });
      running.set(this.proc, dir);
      this.proc.once("exit", () => running.delete(this.proc));
      this.exited = new Promise((r) => this.proc.once("exit", (code, signal) => r({ code, signal })));
      this.proc.stdout.on("data", (d) => (this.output += d));
      this.proc.stderr.on("data", (d) => (this.output += d));
      const deadline = Date.now() + 20000;
      while (Date.now() < deadline) {
        if (!this.alive()) throw new Error(`tako exited: ${this.output}`);
        if ((await healthz(this, 1000)) === 200) return;
        await sleep(50);
      }
      throw new Error(`tako did not become healthy: ${this.output}`);
    },
    /** SIGTERM and wait; resolves with the exit code. */
    async stop() {
      if (!this.proc || !this.alive()) return this.proc?.exitCode;
      this.proc.kill("SIGTERM");
      return (await this.exited).code;
    },
    async cleanup() {
      if (this.proc && this.alive()) this.proc.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
    async register(nickname) {
      const res = await fetch(`${this.url}/api/json/accounts/users/`, {
        method: "POST",
        headers: { "content-type": "application/vnd.api+json" },
        body: JSON.stringify({ data: { type: "user", attributes: nickname ? { nickname } : {} } }),
      });
      if (res.status !== 201) throw new Error(`register: ${res.status} ${await res.text()}`);
      return (await res.json()).data.id;
    },
    async broadcast(topic, event, payload) {
      const res = await fetch(`${this.url}/api/broadcasts`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ topic, event, payload }),
      });
      if (res.status >= 300) throw new Error(`broadcast: ${res.status} ${await res.text()}`);
    },
  };
  await server.start();
  return server;
}

/** Status of `GET /healthz`, or the error's code (a string) when there is no answer in time. */
export function healthz(server, timeoutMs = 2000, path = "/healthz") {
  return new Promise((resolve) => {
    const req = request(`${server.url}${path}`, { agent: false, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("timeout", () => {
      req.destroy();
      resolve("timeout");
    });
    req.on("error", (e) => resolve(e.code || String(e)));
    req.end();
  });
}

/** Runs `f(i)` for i in 0..n with at most `width` in flight. */
export async function pool(n, width, f) {
  let next = 0;
  const worker = async () => {
    while (next < n) await f(next++);
  };
  await Promise.all(Array.from({ length: Math.min(width, n) }, worker));
}

export const keepAlive = new Agent({ keepAlive: true, maxSockets: 16 });

/** A POST with a JSON body over a keep-alive agent; resolves with [status, body]. */
export function postJson(server, path, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = request(
      `${server.url}${path}`,
      {
        method: "POST",
        agent: keepAlive,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(data) },
      },
      (res) => {
        let text = "";
        res.on("data", (d) => (text += d));
        res.on("end", () => resolve([res.statusCode, text]));
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket over TCP: the attacker writes any bytes it likes.

/** A client frame: masked unless `mask: false`; `length` overrides the announced length. */
export function frame(opcode, payload = Buffer.alloc(0), { fin = true, mask = true, length } = {}) {
  payload = Buffer.from(payload);
  const n = length ?? BigInt(payload.length);
  const big = BigInt(n);
  let head;
  if (big < 126n) head = Buffer.from([(fin ? 0x80 : 0) | opcode, (mask ? 0x80 : 0) | Number(big)]);
  else if (big < 65536n) {
    head = Buffer.alloc(4);
    head[0] = (fin ? 0x80 : 0) | opcode;
    head[1] = (mask ? 0x80 : 0) | 126;
    head.writeUInt16BE(Number(big), 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = (fin ? 0x80 : 0) | opcode;
    head[1] = (mask ? 0x80 : 0) | 127;
    head.writeBigUInt64BE(big, 2);
  }
  if (!mask) return Buffer.concat([head, payload]);
  const key = randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= key[i & 3];
  return Buffer.concat([head, key, body]);
}

export const TEXT = 1;
export const BINARY = 2;
export const CLOSE = 8;

/** The 14-byte header of a masked binary frame announcing `length` bytes (a BigInt). */
export function hugeHeader(length) {
  return frame(BINARY, Buffer.alloc(0), { length }).subarray(0, 14);
}

/**
 * Opens a WebSocket with a raw TCP socket (v2 serializer unless `vsn` says otherwise).
 * Resolves once the server answered 101 with an object holding the socket, the server's frames
 * as they are parsed (`frames`: {opcode, payload}; frames over 64 KiB are only counted, in
 * `bigFrames`, unless `keepBig`), `closeCode` (the server's close frame) and
 * `ended` (a promise of the TCP close).
 */
export function rawSocket(server, token, { vsn = "2.0.0", headers = {}, timeoutMs = 5000, keepBig = false } = {}) {
  return new Promise((resolve, reject) => {
    const sock = tcpConnect(server.port, "127.0.0.1");
    const key = randomBytes(16).toString("base64");
    const client = {
      sock,
      frames: [],
      closeCode: null,
      bytesIn: 0,
      bigFrames: 0,
      listeners: [],
      ended: null,
      send(buf) {
        return sock.write(buf);
      },
      text(msg) {
        return sock.write(frame(TEXT, Buffer.from(typeof msg === "string" ? msg : JSON.stringify(msg))));
      },
      /** Resolves with the first frame matching `pred` (already received or to come). */
      waitFrame(pred, ms = 5000) {
        const found = this.frames.find(pred);
        if (found) return Promise.resolve(found);
        return new Promise((res, rej) => {
          const timer = setTimeout(() => rej(new Error("frame timeout")), ms);
          this.listeners.push((f) => {
            if (!pred(f)) return false;
            clearTimeout(timer);
            res(f);
            return true;
          });
        });
      },
      destroy() {
        sock.destroy();
      },
    };
    client.ended = new Promise((r) => sock.once("close", () => r(Date.now())));
    let upgraded = false;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error("upgrade timeout"));
    }, timeoutMs);
    sock.on("error", () => {});
    sock.on("close", () => {
      if (!upgraded) {
        clearTimeout(timer);
        reject(new Error("closed before the upgrade"));
      }
    });
    // Received bytes wait in `chunks` and are joined only once a whole frame is there.
    let chunks = [];
    let have = 0;
    let need = 1;
    sock.on("data", (d) => {
      client.bytesIn += d.length;
      chunks.push(d);
      have += d.length;
      for (;;) {
        if (have < need) return;
        let buf = chunks.length > 1 ? Buffer.concat(chunks) : chunks[0];
        const take = (n) => {
          buf = buf.subarray(n);
          chunks = buf.length ? [buf] : [];
          have = buf.length;
          need = 1;
        };
        if (!upgraded) {
          chunks = [buf];
          const end = buf.indexOf("\r\n\r\n");
          if (end < 0) {
            need = have + 1;
            return;
          }
          const head = buf.subarray(0, end).toString();
          take(end + 4);
          clearTimeout(timer);
          if (!/^HTTP\/1\.1 101/.test(head)) {
            sock.destroy();
            reject(new Error(`upgrade refused: ${head.split("\r\n")[0]}`));
            return;
          }
          upgraded = true;
          resolve(client);
          continue;
        }
        // An unmasked server frame.
        chunks = [buf];
        if (buf.length < 2) {
          need = 2;
          return;
        }
        let len = buf[1] & 0x7f;
        let off = 2;
        if (len === 126) off = 4;
        else if (len === 127) off = 10;
        if (buf.length < off) {
          need = off;
          return;
        }
        if (off === 4) len = buf.readUInt16BE(2);
        else if (off === 10) len = Number(buf.readBigUInt64BE(2));
        if (buf.length < off + len) {
          need = off + len;
          return;
        }
        const opcode = buf[0] & 0x0f;
        // Big frames (shouts) are counted, not kept.
        if (len > 64 * 1024 && !keepBig) {
          take(off + len);
          client.bigFrames++;
          continue;
        }
        const f = { opcode, payload: Buffer.from(buf.subarray(off, off + len)) };
        take(off + len);
        if (f.opcode === CLOSE && client.closeCode === null) {
          client.closeCode = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : 1005;
        }
        client.frames.push(f);
        client.listeners = client.listeners.filter((l) => !l(f));
      }
    });
    const path = `/socket/websocket?vsn=${vsn}&userToken=${token}`;
    const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
    sock.write(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nConnection: Upgrade\r\n` +
        `Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n${extra}\r\n`,
    );
  });
}

/** The decoded v2 JSON message of a text frame, or null. */
export function message(f) {
  if (f.opcode !== TEXT) return null;
  try {
    return JSON.parse(f.payload.toString());
  } catch {
    return null;
  }
}

/** Joins `topic` on a raw socket; resolves with the reply's status. */
export async function rawJoin(client, topic, ref = "1") {
  client.text([ref, ref, topic, "phx_join", {}]);
  const reply = await client.waitFrame((f) => {
    const m = message(f);
    return m && m[1] === ref && m[3] === "phx_reply";
  });
  return message(reply)[4].status;
}

// ---------------------------------------------------------------------------------------------
// The honest client beside the attacker: the official phoenix client on `ws`.

/**
 * A phoenix client joined to `topic`. `probe()` broadcasts over the HTTP API and resolves true
 * when the client receives it within `ms`; `tick` counts probes sent in the background by
 * `startTicking()` and `received` those that arrived.
 */
export async function honest(server, topic = "notifications:honest") {
  const token = await server.register();
  const socket = new Socket(`ws://127.0.0.1:${server.port}/socket`, {
    transport: WebSocket,
    params: { userToken: token },
    reconnectAfterMs: () => 200,
    rejoinAfterMs: () => 200,
    heartbeatIntervalMs: 5000,
    timeout: 10000,
  });
  socket.connect();
  const channel = socket.channel(topic, {});
  const seen = new Set();
  channel.on("probe", ({ n }) => seen.add(n));
  await new Promise((resolve, reject) => {
    channel
      .join()
      .receive("ok", resolve)
      .receive("error", (e) => reject(new Error(`honest join: ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("honest join timeout")));
  });
  let n = 0;
  let ticker = null;
  const h = {
    socket,
    channel,
    seen,
    sent: 0,
    async probe(ms = 5000) {
      const id = `p${n++}`;
      await server.broadcast(topic, "probe", { n: id });
      const deadline = Date.now() + ms;
      while (Date.now() < deadline) {
        if (seen.has(id)) return true;
        await sleep(20);
      }
      return false;
    },
    startTicking(everyMs = 250) {
      ticker = setInterval(() => {
        h.sent++;
        server.broadcast(topic, "probe", { n: `t${h.sent}` }).catch(() => {});
      }, everyMs);
    },
    stopTicking() {
      clearInterval(ticker);
    },
    ticksReceived() {
      return [...seen].filter((s) => s.startsWith("t")).length;
    },
    close() {
      clearInterval(ticker);
      socket.disconnect();
    },
  };
  return h;
}

/** The lines of a server's output that say why it crashed or panicked. */
export function crashLines(output) {
  const lines = output.split("\n").filter((l) => /panicked|memory allocation|abort|fatal|error/i.test(l));
  return (lines.length ? lines : output.split("\n").slice(-5)).slice(0, 6).join(" | ").slice(0, 1500);
}

/**
 * The checks every attack ends with: the server is up and answers `/healthz`, its RSS stayed
 * under `rssBound` bytes (`peak` from `watchRss`), and the honest client still receives.
 */
export async function assertSurvived(t, assert, server, h, { peak, rssBound, label }) {
  assert.ok(server.alive(), `${label}: the server died: ${crashLines(server.output)}`);
  assert.ok(!/panicked at/.test(server.output), `${label}: the server panicked: ${crashLines(server.output)}`);
  assert.equal(await healthz(server, 5000), 200, `${label}: /healthz`);
  t.diagnostic(`${label}: peak RSS ${mb(peak)} (bound ${mb(rssBound)}), fds ${fds(server.pid)}`);
  assert.ok(peak < rssBound, `${label}: peak RSS ${mb(peak)} over ${mb(rssBound)}`);
  if (h) assert.ok(await h.probe(5000), `${label}: the honest client stopped receiving`);
}

/**
 * A v2 client on the `ws` package (reads as fast as it can). `join(topic)` resolves with the
 * reply status; `push(topic, event, payload)` sends without waiting; `counts[event]` counts the
 * events received; `replies` holds the error replies' reasons; `closeCode` the server's code.
 */
export function wsClient(server, token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket/websocket?vsn=2.0.0&userToken=${token}`, {
      maxPayload: 256 * MiB,
    });
    let ref = 0;
    const waiting = new Map();
    const c = {
      ws,
      counts: {},
      errors: [],
      closeCode: null,
      closed: null,
      join(topic) {
        const r = String(++ref);
        ws.send(JSON.stringify([r, r, topic, "phx_join", {}]));
        return new Promise((res) => waiting.set(r, res));
      },
      push(topic, event, payload) {
        const r = String(++ref);
        ws.send(JSON.stringify([null, r, topic, event, payload]));
      },
      close() {
        ws.terminate();
      },
    };
    c.closed = new Promise((r) => ws.once("close", (code) => r((c.closeCode = code))));
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      let m;
      try {
        m = JSON.parse(data.toString());
      } catch {
        return;
      }
      const [, r, , event, payload] = m;
      c.counts[event] = (c.counts[event] || 0) + 1;
      if (event === "phx_reply") {
        if (waiting.has(r)) {
          waiting.get(r)(payload.status);
          waiting.delete(r);
        } else if (payload.status === "error") c.errors.push(payload.response?.reason);
      }
    });
    ws.once("open", () => resolve(c));
    ws.once("error", reject);
  });
}
