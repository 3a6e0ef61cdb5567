// The operators' dashboard in a real headless Chromium: sign in, watch an npm client come
// online, message it from the form, and check it got the message. The server runs with known
// tokens and debug logs in JSON; afterwards no log line may hold a token or the user's UUID.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { ADMIN, CLIENT, artifact, cleanup, openBrowser, register, sleep, startTako } from "./harness.js";

test("the dashboard shows a client coming online and messages it; logs hold no secrets", { timeout: 90000 }, async () => {
  const server = await startTako({
    TAKO_LOG: "debug,sqlx=warn,hyper=info,tower=info,h2=info",
    TAKO_LOG_FORMAT: "json",
  });
  const userId = await register(server, "Booth_Visitor");
  const { page, pageErrors } = await openBrowser({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2 });

  await page.goto(`${server.url}/dashboard`);
  // A wrong token is refused and nothing is kept.
  await page.fill("#token", "not-the-token");
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#login-error:has-text('not the admin token')");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("tako.adminToken")), null);

  await page.fill("#token", ADMIN);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#app:not([hidden])");
  await page.waitForSelector("#status:has-text('live')");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("tako.adminToken")), ADMIN);
  assert.ok(!page.url().includes(ADMIN), "the token is never in the URL");

  // The web client connects, as HoloQuest does.
  const socket = new Socket(`${server.url.replace("http", "ws")}/socket`, { transport: WebSocket, params: { userToken: userId } });
  socket.connect();
  cleanup(async () => socket.disconnect());
  const channel = socket.channel("notifications");
  const received = [];
  channel.on("msg", (payload) => received.push(payload));
  await new Promise((resolve, reject) => channel.join().receive("ok", resolve).receive("error", reject));

  // It appears online, by nickname.
  await page.waitForSelector('[data-topic="notifications"] li[data-nickname="Booth_Visitor"]', { timeout: 10000 });
  await page.waitForFunction(() => document.getElementById("count-users").textContent === "1");
  assert.match(await page.textContent('[data-topic="notifications"] h3'), /1 online/);

  // Find it by nickname and send it a message from the form.
  await page.fill("#search", "booth_vis");
  await page.click("#search-form button[type=submit]");
  await page.click('#search-results li[data-nickname="Booth_Visitor"] button');
  await page.fill("#message", "Your prize is ready at booth A-12");
  await page.click("#message-form button[type=submit]");
  await page.waitForSelector("#sent .badge.live:has-text('delivered live')");
  const deadline = Date.now() + 5000;
  while (!received.length && Date.now() < deadline) await sleep(20);
  assert.equal(received.length, 1, "the npm client got the message");
  assert.equal(received[0].message, "Your prize is ready at booth A-12");
  assert.equal(received[0].user_id, userId);

  // A broadcast from the other form reaches it too.
  const announcements = [];
  channel.on("announcement", (p) => announcements.push(p));
  await page.fill("#b-text", "Doors close at 18:00");
  await page.click("#broadcast-form button[type=submit]");
  await page.waitForSelector("#broadcast-result:has-text('Sent to 1 socket')");
  while (!announcements.length && Date.now() < deadline + 5000) await sleep(20);
  assert.deepEqual(announcements, [{ text: "Doors close at 18:00" }]);

  // The chart has points, and the page fits a phone screen (no horizontal scrolling).
  await page.waitForFunction(() => document.getElementById("rate-out").textContent !== "");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `no horizontal scroll on a phone (overflow ${overflow}px)`);
  await page.screenshot({ path: artifact("dashboard-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  await sleep(300);
  await page.screenshot({ path: artifact("dashboard-desktop.png"), fullPage: true });
  assert.deepEqual(pageErrors, [], "no JavaScript errors");

  // Logs: plenty of them (debug), one JSON object a line, request ids, and no secrets.
  await sleep(200);
  const lines = server.output.split("\n").filter(Boolean);
  assert.ok(lines.length > 10, "debug logs were written");
  const records = lines.map((l) => JSON.parse(l));
  const http = records.filter((r) => r.span?.name === "http" || r.spans?.some((s) => s.name === "http"));
  assert.ok(http.length > 0, "HTTP requests are logged");
  for (const r of http) {
    const span = r.span?.name === "http" ? r.span : r.spans.find((s) => s.name === "http");
    assert.match(span.request_id, /^[0-9a-f-]{36}$/, JSON.stringify(r));
  }
  for (const secret of [ADMIN, CLIENT, userId, userId.replaceAll("-", ""), userId.slice(0, 8)]) {
    const leaks = lines.filter((l) => l.includes(secret));
    assert.deepEqual(leaks, [], `no log line holds ${secret === userId ? "the user's UUID" : "a secret"}`);
  }
});
