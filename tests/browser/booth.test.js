// A screen booth's page (issue 16) in a real headless Chromium, as a phone propped on a booth's
// table: it shows a QR code whose decoded content the scan route accepts, the code changes
// after a step, and a revoked booth key stops it. Screenshots in artifacts/.
import { test } from "node:test";
import assert from "node:assert/strict";
import jsQR from "jsqr";
import { ADMIN, CLIENT, api, artifact, openBrowser, sleep, startTako } from "./harness.js";

// Long enough that decoding and scanning fit in the accepted window on a loaded machine.
const STEP = 5;

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
  const server = await startTako({ TAKO_SCAN_URL: "https://app.example/sc/{code}", TAKO_CODE_STEP: String(STEP) });
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

  const { page, pageErrors } = await openBrowser({ viewport: { width: 768, height: 1024 } });

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
  await page.screenshot({ path: artifact("booth-page.png") });

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
  await page.screenshot({ path: artifact("booth-revoked.png") });
  // Reloading does not bring it back.
  const reloaded = await page.goto(pageUrl);
  assert.equal(reloaded.status(), 404);
  assert.deepEqual(pageErrors, []);
});
