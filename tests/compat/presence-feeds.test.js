// Presence frames go only to clients that ask at join time: `{presence: "full"}` (the npm
// Presence class), `{presence: "count"}` (a small `presence_count`), nothing (no presence frame,
// though the client is tracked), and `TAKO_PRESENCE=phoenix` for apps that rely on Phoenix's
// default of sending the list to every joiner.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Presence } from "phoenix";
import { collect, connect, eventually, join, makeSocket, sleep, startTako } from "./helpers.js";

const ADMIN = "compat-admin-token";
const servers = [];
const sockets = [];
after(async () => {
  for (const socket of sockets) socket.disconnect();
  for (const server of servers) await server.cleanup();
});

async function start(env = {}) {
  const server = await startTako({ TAKO_ADMIN_TOKEN: ADMIN, ...env });
  servers.push(server);
  return server;
}

/** A connected socket that records the presence events of every topic. */
async function client(server, nickname) {
  const id = await server.register(nickname);
  const socket = makeSocket(server, { userToken: id });
  const seen = [];
  socket.onMessage((m) => m.event.startsWith("presence_") && seen.push(m));
  sockets.push(socket);
  await connect(socket);
  return { socket, seen };
}

async function listed(server) {
  const res = await fetch(`${server.url}/api/presence/notifications`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(res.status, 200);
  return res.json();
}

describe("presence feeds", () => {
  let tako;
  before(async () => {
    tako = await start();
  });

  it("sends nothing to a client that asks nothing, yet tracks it", async () => {
    const quiet = await Promise.all(["Silent", "Hushed", "Muted"].map((n) => client(tako, n)));
    for (const q of quiet) await join(q.socket, "notifications", {});
    const watcher = await client(tako, "Watcher");
    const channel = watcher.socket.channel("notifications", { presence: "full" });
    const presence = new Presence(channel);
    await new Promise((resolve, reject) => channel.join().receive("ok", resolve).receive("error", reject));
    const names = () => presence.list((_k, { metas }) => metas[0].nickname).sort();
    await eventually(() => JSON.stringify(names()) === JSON.stringify(["Hushed", "Muted", "Silent", "Watcher"]), "the watcher lists everyone");
    assert.equal((await listed(tako)).users, 4);
    quiet[0].socket.disconnect();
    await eventually(() => !names().includes("Silent"), "a quiet client's leave reaches the watcher");
    await sleep(200);
    for (const q of quiet) assert.deepEqual(q.seen, [], "no presence frame without asking");
    watcher.socket.disconnect();
  });

  it("sends a coalesced count to a client that asks for the count", async () => {
    const counter = await client(tako, "Counter");
    const channel = counter.socket.channel("notifications", { presence: "count" });
    const counts = collect(channel, "presence_count");
    await new Promise((resolve, reject) => channel.join().receive("ok", resolve).receive("error", reject));
    await eventually(() => counts.length >= 1, "the count at once");
    const others = await Promise.all(["CountedA", "CountedB"].map((n) => client(tako, n)));
    for (const o of others) await join(o.socket, "notifications", {});
    const expected = await listed(tako);
    await eventually(() => {
      const last = counts.at(-1);
      return last && last.users === expected.users && last.connections === expected.connections;
    }, `the count reaches ${expected.users} users`, 2500);
    assert.ok(counter.seen.every((m) => m.event === "presence_count"), "nothing but counts");
    counter.socket.disconnect();
  });

  it("refuses an unknown presence parameter with a reason", async () => {
    const odd = await client(tako, "Oddball");
    await assert.rejects(join(odd.socket, "notifications", { presence: "everyone" }), /presence must be/);
  });

  it("sends the list to every joiner in phoenix mode", async () => {
    const phoenix = await start({ TAKO_PRESENCE: "phoenix" });
    const classic = await client(phoenix, "Classic");
    const channel = classic.socket.channel("notifications", {});
    const presence = new Presence(channel);
    await new Promise((resolve, reject) => channel.join().receive("ok", resolve).receive("error", reject));
    await eventually(() => presence.list((k) => k).length === 1, "listed without asking");
    assert.equal(classic.seen[0].event, "presence_state");
  });
});
