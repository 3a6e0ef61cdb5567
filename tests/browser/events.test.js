// The dashboard's Events page (issue 16) in a real headless Chromium, as an organiser runs an
// event: create it and its stamps, upload the booth CSV and check the QR sheet it downloads (a
// decoded code is accepted by the scan route), see scans counted per stamp, draw winners (only
// among completers), export CSV, make and revoke a booth link, message a winner.
// Screenshots of each view in artifacts/events-*.png.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { unzipSync, strFromU8 } from "fflate";
import jsQR from "jsqr";
import { ADMIN, CLIENT, api, artifact, openBrowser, register, sleep, startTako } from "./harness.js";

const SCANNED = "https://app.example/sc/";

async function scan(server, user, code) {
  return api(server, CLIENT, "POST", `/api/json/accounts/users/${user}/scans`, {
    data: { type: "scan", attributes: { code } },
  });
}

// A PNG's QR content: drawn on a canvas in the page, its pixels decoded here.
async function decodePng(page, png) {
  const dataUrl = `data:image/png;base64,${Buffer.from(png).toString("base64")}`;
  const { pixels, size } = await page.evaluate(async (src) => {
    const img = new Image();
    img.src = src;
    await img.decode();
    const size = 600;
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = size;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, size, size);
    ctx.drawImage(img, 20, 20, size - 40, size - 40);
    return { pixels: Array.from(ctx.getImageData(0, 0, size, size).data), size };
  }, dataUrl);
  const found = jsQR(Uint8ClampedArray.from(pixels), size, size);
  return found ? found.data : null;
}

// A CSV as rows of cells (the server quotes only what needs it; these cells need none).
function parseCsv(text) {
  return text.trim().split("\n").map((line) => line.split(","));
}

async function download(page, click) {
  const [file] = await Promise.all([page.waitForEvent("download"), click()]);
  return { name: file.suggestedFilename(), bytes: readFileSync(await file.path()) };
}

async function noHorizontalScroll(page) {
  return page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
}

test("an organiser runs an event from the dashboard's Events page", { timeout: 180000 }, async () => {
  const server = await startTako({ TAKO_SCAN_URL: `${SCANNED}{code}` });
  const { page, pageErrors } = await openBrowser({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  page.on("dialog", (dialog) => dialog.accept());

  await page.goto(`${server.url}/dashboard`);
  await page.fill("#token", ADMIN);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#app:not([hidden])");
  await page.click("#tab-events");
  await page.waitForSelector("#events:not([hidden])");
  await page.waitForSelector("#event-list li:has-text('No event yet')");

  // Create the event, then edit it.
  await page.click("#new-event summary");
  await page.fill("#ev-id", "fest-2026");
  await page.fill("#ev-name", "Fest 2026");
  await page.fill("#ev-required", "2");
  await page.click("#event-create-form button[type=submit]");
  await page.waitForSelector("#event-detail:not([hidden])");
  await page.waitForSelector("#event-title:has-text('Fest 2026 (fest-2026)')");
  await page.fill("#ed-name", "Fest 2026 — Hall A");
  await page.fill("#ed-opens", "2026-06-06T10:00");
  await page.click("#event-form button[type=submit]");
  await page.waitForSelector("#event-result:has-text('Saved')");
  let r = await api(server, ADMIN, "GET", "/api/json/events/fest-2026");
  assert.equal(r.body.data.attributes.name, "Fest 2026 — Hall A");
  assert.ok(r.body.data.attributes.opens_at, "opening time saved");
  // Open now, for the scans below.
  await page.fill("#ed-opens", "");
  await Promise.all([
    page.waitForResponse((res) => res.request().method() === "PATCH" && res.url().endsWith("/api/json/events/fest-2026")),
    page.click("#event-form button[type=submit]"),
  ]);
  r = await api(server, ADMIN, "GET", "/api/json/events/fest-2026");
  assert.equal(r.body.data.attributes.opens_at, null);

  // A printed stamp: its code is shown once, in the page.
  await page.click("#new-stamp summary");
  await page.fill("#st-name", "Kitsune Prints");
  await page.fill("#st-booth", "4C16");
  await page.click("#stamp-create-form button[type=submit]");
  await page.waitForSelector("#stamp-secret:not([hidden])");
  const printedCode = await page.inputValue("#stamp-secret-value");
  assert.ok(printedCode.startsWith(SCANNED), printedCode);
  // A screen stamp.
  await page.click("#new-stamp summary");
  await page.fill("#st-name", "Live Stage");
  await page.fill("#st-booth", "STAGE");
  await page.selectOption("#st-mode", "screen");
  await page.click("#stamp-create-form button[type=submit]");
  await page.waitForSelector("#stamps tr[data-booth='STAGE']");
  // Edit one, hide and show it again.
  await page.click("#stamps tr[data-booth='4C16'] button:has-text('Edit')");
  await page.fill("#se-description", "Prints, stickers");
  await page.click("#stamp-edit-form button[type=submit]");
  await page.waitForSelector("#stamp-result:has-text('Saved Kitsune Prints')");
  await page.click("#stamps tr[data-booth='STAGE'] button:has-text('Hide')");
  await page.waitForSelector("#stamps tr.hidden-stamp[data-booth='STAGE']");
  r = await api(server, CLIENT, "GET", "/api/json/events/fest-2026?include=stamps");
  assert.deepEqual(r.body.included.map((s) => s.attributes.booth_id), ["4C16"], "hidden from visitors");
  await page.click("#stamps tr[data-booth='STAGE'] button:has-text('Show')");
  await page.waitForSelector("#stamps tr[data-booth='STAGE']:not(.hidden-stamp)");

  // A malformed CSV: every bad line named, nothing imported.
  await page.setInputFiles("#import-file", { name: "bad.csv", mimeType: "text/csv", buffer: Buffer.from("name,booth_id,nsfw\nFine,9Z99,false\n,8Y88,\nBad,7X77,perhaps\n") });
  await page.click("#import-form button[type=submit]");
  await page.waitForSelector("#import-result .line-errors li");
  const lineErrors = await page.$$eval("#import-result .line-errors li", (items) => items.map((i) => i.textContent));
  assert.equal(lineErrors.length, 2);
  assert.match(lineErrors[0], /^line 3: name/);
  assert.match(lineErrors[1], /^line 4: nsfw/);
  await page.screenshot({ path: artifact("events-import-error.png"), fullPage: true });
  r = await api(server, ADMIN, "GET", "/api/json/events/fest-2026?include=stamps");
  assert.equal(r.body.included.length, 2, "nothing imported");

  // The booth CSV: one known booth updated, two new printed ones; the zip has their codes.
  const csv = "name,booth_id,description,mode\n" +
    "Kitsune Prints & Co,4C16,\"Prints, stickers\",printed\n" +
    "Hidden Cafe,5A01,,printed\n" +
    "Merch Corner,6B02,,\n";
  await page.setInputFiles("#import-file", { name: "booths.csv", mimeType: "text/csv", buffer: Buffer.from(csv) });
  const zip = await download(page, () => page.click("#import-form button[type=submit]"));
  assert.equal(zip.name, "fest-2026-qr-codes.zip");
  await page.waitForSelector("#import-result p[data-created='2'][data-updated='1']");
  const files = unzipSync(new Uint8Array(zip.bytes));
  const names = Object.keys(files).sort();
  assert.equal(names.length, 5, `index.html and an SVG and a PNG per new printed stamp: ${names}`);
  assert.ok(names.includes("index.html"));
  const index = strFromU8(files["index.html"]);
  for (const text of ["Fest 2026", "Kitsune Prints &amp; Co", "Hidden Cafe", "Merch Corner", "issued by an earlier import"]) {
    assert.ok(index.includes(text), `${text} in the index`);
  }
  const pngs = names.filter((n) => n.endsWith(".png"));
  assert.equal(pngs.length, 2);
  for (const png of pngs) assert.ok(names.includes(png.replace(/\.png$/, ".svg")) && index.includes(`src="${png.replace(/\.png$/, ".svg")}"`));
  await page.waitForSelector("#stamps tr[data-booth='6B02']");
  await page.screenshot({ path: artifact("events-import.png"), fullPage: true });

  // Scans: Ana collects two stamps (completes), Ben one. One code decoded from the zip's PNG.
  const hiddenCafe = pngs.find((n) => n.startsWith("5A01"));
  const decoded = await decodePng(page, files[hiddenCafe]);
  assert.ok(decoded && decoded.startsWith(SCANNED), `decoded ${decoded}`);
  const ana = await register(server, "Ana_Winner");
  const ben = await register(server, "Ben_Halfway");
  r = await scan(server, ana, decoded);
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assert.equal((await scan(server, ana, printedCode)).status, 201);
  assert.equal((await scan(server, ben, printedCode)).status, 201);

  // Scans per stamp, once the page refreshes (the window select reloads at once).
  await page.selectOption("#stat-window", "1440");
  await page.waitForSelector("#stamps tr[data-booth='4C16'] .count:has-text('2')");
  assert.equal(await page.textContent("#stamps tr[data-booth='5A01'] .count"), "1");
  assert.equal(await page.textContent("#stamps tr[data-booth='6B02'] .count"), "0");
  assert.equal(await page.textContent("#stat-scans"), "3");
  assert.equal(await page.textContent("#stat-completers"), "1");
  const chartInk = await page.evaluate(() => {
    const c = document.getElementById("scan-chart");
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let ink = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i]) ink++;
    return ink;
  });
  assert.ok(chartInk > 50, "the chart drew bars");

  // The draw: three asked, only the one completer drawn.
  await page.selectOption("#stat-window", "60");
  await page.click("#tab-live");
  await page.click("#tab-events");
  await page.waitForSelector("#completers li[data-nickname='Ana_Winner']");
  assert.equal(await page.$("#completers li[data-nickname='Ben_Halfway']"), null);
  await page.fill("#draw-count", "3");
  await page.click("#draw-form button[type=submit]");
  await page.waitForSelector("#draw-result:has-text('Drawn: Ana_Winner')");
  await page.waitForSelector("#draws .draw h3:has-text('1 of 3 asked')");
  const winners = await page.$$eval("#draws li", (items) => items.map((i) => i.dataset.user));
  assert.deepEqual(winners, [ana], "winners only among completers");
  await page.waitForSelector("#completers li[data-nickname='Ana_Winner'] .badge:has-text('drawn')");
  await page.click("#draw-form button[type=submit]");
  await page.waitForSelector("#draw-result.error:has-text('already drawn')");
  await page.screenshot({ path: artifact("events-draw.png"), fullPage: true });

  // CSV exports: without user ids, then with them.
  let exported = await download(page, () => page.click("#completers-csv"));
  assert.equal(exported.name, "fest-2026-completers.csv");
  let rows = parseCsv(exported.bytes.toString());
  assert.deepEqual(rows[0], ["nickname", "completed_at"]);
  assert.equal(rows.length, 2);
  assert.equal(rows[1][0], "Ana_Winner");
  assert.ok(!Number.isNaN(Date.parse(rows[1][1])));
  assert.ok(!exported.bytes.toString().includes(ana), "no user ids unless asked");
  await page.check("#csv-user-ids");
  exported = await download(page, () => page.click("#completers-csv"));
  rows = parseCsv(exported.bytes.toString());
  assert.deepEqual(rows[0], ["nickname", "completed_at", "user_id"]);
  assert.equal(rows[1][2], ana);
  exported = await download(page, () => page.click("#draws-csv"));
  assert.equal(exported.name, "fest-2026-draws.csv");
  rows = parseCsv(exported.bytes.toString());
  assert.deepEqual(rows[0], ["draw_id", "drawn_at", "requested", "nickname", "user_id"]);
  assert.deepEqual(rows.slice(1).map((row) => [row[2], row[3], row[4]]), [["3", "Ana_Winner", ana]]);

  // Message the winner from the draw's list, with the dashboard's message form.
  await page.click(`#draws li[data-user='${ana}'] button[data-action='message']`);
  await page.waitForSelector("#events #message-form:not([hidden])");
  assert.equal(await page.textContent("#recipient"), "Ana_Winner");
  await page.fill("#message", "Your prize is ready at booth 4C16");
  await page.click("#message-form button[type=submit]");
  await page.waitForSelector("#sent li:has-text('To Ana_Winner: Your prize is ready at booth 4C16') .badge");
  const messageId = await page.getAttribute("#sent .badge", "data-message-id");
  r = await fetch(`${server.url}/api/messages/${messageId}`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(r.status, 200, "the message was stored for Ana");

  // A booth link for the screen stamp: shown once, copyable, and it opens the booth page;
  // revoked, it stops.
  await page.click("#stamps tr[data-booth='STAGE'] button[data-action='booth-link']");
  await page.waitForSelector("#stamp-secret-text:has-text('Booth link of Live Stage')");
  const link = await page.inputValue("#stamp-secret-value");
  assert.ok(link.startsWith(`${server.url}/booth/`), link);
  assert.equal((await fetch(link)).status, 200);
  await page.screenshot({ path: artifact("events-booth-link.png"), fullPage: true });
  await page.click("#stamps tr[data-booth='STAGE'] button[data-action='revoke']");
  await page.waitForSelector("#stamp-result:has-text('Revoked')");
  assert.equal((await fetch(link)).status, 404, "a revoked link stops");

  // Tidy on a laptop and on a phone: no horizontal scrolling.
  await page.screenshot({ path: artifact("events-desktop.png"), fullPage: true });
  assert.ok((await noHorizontalScroll(page)) <= 0, "no horizontal scroll on a laptop");
  await page.setViewportSize({ width: 390, height: 844 });
  await sleep(300);
  assert.ok((await noHorizontalScroll(page)) <= 0, "no horizontal scroll on a phone");
  await page.screenshot({ path: artifact("events-phone.png"), fullPage: true });
  await page.screenshot({ path: artifact("events-phone-top.png") });
  await page.locator("#stamps").screenshot({ path: artifact("events-phone-stamps.png") });
  assert.deepEqual(pageErrors, [], "no JavaScript errors");
});
