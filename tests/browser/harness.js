// What the browser tests share: a Tako started from TAKO_BIN on a free port with a fresh SQLite
// database and known tokens, a headless Debian Chromium with a fresh profile, and clean-up of
// both when the test file ends (passed or failed).
import { after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const TAKO_BIN = process.env.TAKO_BIN;
if (!TAKO_BIN) throw new Error("TAKO_BIN must name the tako binary (scripts/test sets it)");
export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
export const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "artifacts");
export const ADMIN = "admin-" + Math.random().toString(36).slice(2) + Date.now().toString(36);
export const CLIENT = "client-" + Math.random().toString(36).slice(2) + Date.now().toString(36);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const cleanups = [];
after(async () => {
  for (const f of cleanups.reverse()) await f();
});

/** Runs `f` when the test file ends, after everything registered later. */
export function cleanup(f) {
  cleanups.push(f);
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

/** Starts Tako with the test tokens plus `env`; resolves once /readyz answers 200. */
export async function startTako(env = {}) {
  const dir = mkdtempSync(join(tmpdir(), "tako-browser-"));
  const port = await freePort();
  const server = { url: `http://127.0.0.1:${port}`, output: "", dir };
  server.proc = spawn(TAKO_BIN, [], {
    env: {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: `sqlite://${join(dir, "tako.db")}`,
      HOLOQUEST_API_TOKEN: CLIENT,
      TAKO_ADMIN_TOKEN: ADMIN,
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  server.proc.stdout.on("data", (d) => (server.output += d));
  server.proc.stderr.on("data", (d) => (server.output += d));
  cleanup(async () => {
    if (server.proc.exitCode === null) {
      const exited = new Promise((r) => server.proc.once("exit", r));
      server.proc.kill("SIGTERM");
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    if (server.proc.exitCode !== null) throw new Error(`tako exited: ${server.output}`);
    try {
      if ((await fetch(`${server.url}/readyz`)).status === 200) return server;
    } catch {}
    await sleep(50);
  }
  throw new Error(`tako did not become ready: ${server.output}`);
}

/**
 * A headless Chromium with a fresh profile; resolves to { context, page, pageErrors }.
 * `options` go to launchPersistentContext (viewport, deviceScaleFactor, acceptDownloads…).
 */
export async function openBrowser(options = {}) {
  const profile = mkdtempSync(join(tmpdir(), "tako-chromium-"));
  // A fresh profile each run (Playwright passes it as --user-data-dir).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    ...options,
  });
  cleanup(async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  return { context, page, pageErrors };
}

/** A JSON:API call; resolves to { status, body }. */
export async function api(server, token, method, path, body) {
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      accept: "application/vnd.api+json",
      ...(body ? { "content-type": "application/vnd.api+json" } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** Registers a user with the client token; resolves to its id. */
export async function register(server, nickname) {
  const r = await api(server, CLIENT, "POST", "/api/json/accounts/users", {
    data: { type: "user", attributes: { nickname } },
  });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.data.id;
}

export function artifact(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}
