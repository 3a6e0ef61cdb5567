// A screen booth's page (issue 16) in a real headless Chromium, as a phone propped on a booth's
// table: it shows a QR code whose decoded content the scan route accepts, the code changes
// after a step, and a revoked booth key stops it. Screenshots in artifacts/.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import jsQR from "jsqr";

const TAKO_BIN = process.env.TAKO_BIN;
if (!TAKO_BIN) throw new Error("TAKO_BIN must name the tako binary (scripts/test sets it)");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "artifacts");
const ADMIN = "admin-" + Math.random().toString(36).slice(2) + Date.now().toString(36);
const CLIENT = "client-" + Math.random().toString(36).slice(2) + Date.now().toString(36);
// Long enough that decoding and scanning fit in the accepted window on a loaded machine.
const STEP = 5;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

const cleanups = [];
after(async () => {
  for (const f of cleanups.reverse()) await f();
});

async function startTako() {
  const dir = mkdtempSync(join(tmpdir(), "tako-booth-"));
  const port = await freePort();
  const server = { url: `http://127.0.0.1:${port}`, output: "" };
  server.proc = spawn(TAKO_BIN, [], {
    env: {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: `sqlite://${join(dir, "tako.db")}`,
      HOLOQUEST_API_TOKEN: CLIENT,
      TAKO_ADMIN_TOKEN: ADMIN,
      TAKO_SCAN_URL: "https://app.example/sc/{code}",
      TAKO_CODE_STEP: String(STEP),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  server.proc.stdout.on("data", (d) => (server.output += d));
  server.proc.stderr.on("data", (d) => (server.output += d));
  cleanups.push(async () => {
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

async function api(server, token, method, path, body) {
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

// What the page's QR code holds, decoded from its pixels (drawn on a canvas in the page).
async function decodeShown(page) {
  const pixels = await page.evaluate(async () => {
    const img = document.getElementById("qr");
    if (!img.getAttribute("src")) return null;
    await img.decode();
    const size = 400;
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = size;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, size, size);
    ctx.drawImage(img, 20, 20, size - 40, size - 40);
    return Array.from(ctx.getImageData(0, 0, size, size).data);
  });
  if (!pixels) return null;
  const found = jsQR(Uint8ClampedArray.from(pixels), 400, 400);
  return found ? found.data : null;
}

test("a booth page shows a scannable code that changes each step and stops when revoked", { timeout: 90000 }, async () => {
  const server = await startTako();
  let r = await api(server, ADMIN, "POST", "/api/json/events", {
    data: { type: "event", id: "fest", attributes: { name: "Fest", stamps_required: 1 } },
  });
  assert.equal(r.status, 201);
  r = await api(server, ADMIN, "POST", "/api/json/events/fest/stamps", {
    data: { type: "stamp", attributes: { name: "Live Stage", booth_id: "STAGE", mode: "screen" } },
  });
  assert.equal(r.status, 201);
  const stampId = r.body.data.id;
  r = await api(server, ADMIN, "POST", `/api/json/stamps/${stampId}/booth-key`);
  assert.equal(r.status, 201);
  const pageUrl = server.url + r.body.path;

  const profile = mkdtempSync(join(tmpdir(), "tako-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 768, height: 1024 },
  });
  cleanups.push(async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));

  await page.goto(pageUrl);
  await page.waitForSelector("#qr[src^='data:image/svg+xml']");
  await page.waitForSelector("#name:has-text('Live Stage · STAGE')");
  r = await api(server, CLIENT, "POST", "/api/json/accounts/users", {
    data: { type: "user", attributes: { nickname: "Booth_Fan" } },
  });
  assert.equal(r.status, 201);
  const userId = r.body.data.id;

  const first = await decodeShown(page);
  assert.ok(first && first.startsWith("https://app.example/sc/"), `decoded ${first}`);
  r = await api(server, CLIENT, "POST", `/api/json/accounts/users/${userId}/scans`, {
    data: { type: "scan", attributes: { code: first } },
  });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assert.equal(r.body.data.relationships.stamp.data.id, stampId);
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, "booth-page.png") });

  // The page refreshes itself: within a step and a bit, it shows another code.
  let second = first;
  const deadline = Date.now() + (STEP + 3) * 1000;
  while (second === first && Date.now() < deadline) {
    await sleep(250);
    second = (await decodeShown(page)) ?? first;
  }
  assert.notEqual(second, first, "the code changed after a step");

  // Revoked: at its next refresh the page stops showing a code.
  r = await api(server, ADMIN, "DELETE", `/api/json/stamps/${stampId}/booth-key`);
  assert.equal(r.status, 204);
  await page.waitForSelector("#status:has-text('revoked')", { timeout: (STEP + 3) * 1000 });
  assert.equal(await decodeShown(page), null, "no QR code once revoked");
  await page.screenshot({ path: join(ARTIFACTS, "booth-revoked.png") });
  // Reloading does not bring it back.
  const reloaded = await page.goto(pageUrl);
  assert.equal(reloaded.status(), 404);
  assert.deepEqual(pageErrors, []);
});
