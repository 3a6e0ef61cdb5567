// Starts the real `tako` binary and drives it with the official phoenix npm client.
import { spawn } from "node:child_process";
import { request } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join as pathJoin } from "node:path";
import { Socket } from "phoenix";
import WebSocket from "ws";

export const TAKO_BIN = process.env.TAKO_BIN;
if (!TAKO_BIN) throw new Error("TAKO_BIN must name the tako binary (scripts/test sets it)");

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

/** A running tako on a fresh SQLite file; `restart()` keeps the port and the data. */
export async function startTako(env = {}) {
  const dir = mkdtempSync(pathJoin(tmpdir(), "tako-compat-"));
  const port = await freePort();
  const server = {
    port,
    url: `http://127.0.0.1:${port}`,
    socketUrl: `ws://127.0.0.1:${port}/socket`,
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
    async start() {
      this.proc = spawn(TAKO_BIN, [], { env: this.env, stdio: ["ignore", "pipe", "pipe"] });
      this.proc.stdout.on("data", (d) => (this.output += d));
      this.proc.stderr.on("data", (d) => (this.output += d));
      const deadline = Date.now() + 15000;
      while (Date.now() < deadline) {
        if (this.proc.exitCode !== null) throw new Error(`tako exited: ${this.output}`);
        try {
          const res = await fetch(`${this.url}/healthz`);
          if (res.status === 200) return;
        } catch {}
        await sleep(50);
      }
      throw new Error(`tako did not become healthy: ${this.output}`);
    },
    /** SIGTERM and wait; resolves with the exit code. */
    async stop() {
      if (!this.proc || this.proc.exitCode !== null) return this.proc?.exitCode;
      const exited = new Promise((r) => this.proc.once("exit", (code) => r(code)));
      this.proc.kill("SIGTERM");
      return exited;
    },
    async restart() {
      await this.stop();
      await this.start();
    },
    async cleanup() {
      if (this.proc && this.proc.exitCode === null) this.proc.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
    headers(token) {
      const h = { "content-type": "application/vnd.api+json", accept: "application/vnd.api+json" };
      const t = token ?? this.env.HOLOQUEST_API_TOKEN;
      if (t) h.authorization = `Bearer ${t}`;
      return h;
    },
    /** Registers a user as the web client does; returns its id. */
    async register(nickname) {
      const attributes = nickname ? `{"nickname":"${nickname}"}` : "{}";
      const res = await fetch(`${this.url}/api/json/accounts/users/`, {
        method: "POST",
        headers: this.headers(),
        body: `{"data":{"type":"user","attributes":${attributes}}}`,
      });
      if (res.status !== 201) throw new Error(`register: ${res.status} ${await res.text()}`);
      return (await res.json()).data.id;
    },
  };
  await server.start();
  return server;
}

/** A phoenix Socket over `ws`, as the web client makes it. */
export function makeSocket(server, params, opts = {}) {
  const { SocketClass = Socket, ...rest } = opts;
  return new SocketClass(server.socketUrl, {
    transport: WebSocket,
    params,
    reconnectAfterMs: () => 50,
    rejoinAfterMs: () => 50,
    heartbeatIntervalMs: 30000,
    ...rest,
  });
}

/** v1 serializer: JSON objects, as `vsn: "1.0.0"` clients send. */
export const v1 = {
  vsn: "1.0.0",
  encode: (msg, callback) => callback(JSON.stringify(msg)),
  decode: (raw, callback) => callback(JSON.parse(raw)),
};

/** Resolves when the socket opens; rejects on the first error before that. */
export function connect(socket, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("connect timeout")), timeoutMs);
    const open = socket.onOpen(() => {
      clearTimeout(timer);
      socket.off([open, err]);
      resolve(socket);
    });
    const err = socket.onError((e) => {
      clearTimeout(timer);
      socket.off([open, err]);
      socket.disconnect();
      reject(e instanceof Error ? e : new Error("socket error"));
    });
    socket.connect();
  });
}

/** Joins `topic`; resolves with the channel once the server said ok. */
export function join(socket, topic, params = {}) {
  const channel = socket.channel(topic, params);
  return new Promise((resolve, reject) => {
    channel
      .join()
      .receive("ok", () => resolve(channel))
      .receive("error", (e) => reject(new Error(`join error: ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("join timeout")));
  });
}

/** Pushes and resolves with [status, response]. */
export function push(channel, event, payload) {
  return new Promise((resolve) => {
    channel
      .push(event, payload)
      .receive("ok", (r) => resolve(["ok", r]))
      .receive("error", (r) => resolve(["error", r]))
      .receive("timeout", () => resolve(["timeout", null]));
  });
}

/** Collects every `event` a channel receives. */
export function collect(channel, event) {
  const got = [];
  channel.on(event, (payload) => got.push(payload));
  return got;
}

/** Waits until `predicate()` holds, polling. */
export async function eventually(predicate, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (predicate()) return;
    await sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** The HTTP status a WebSocket upgrade of `path` is answered with. */
export function upgradeStatus(server, path, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = request(`${server.url}${path}`, {
      headers: { connection: "Upgrade", upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", ...headers },
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on("response", (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("error", reject);
    req.end();
  });
}
