// Who is online, as the phoenix client's Presence class shows it, across three clients: joins,
// leaves, a nickname change through the HTTP API, a killed client and a frozen one.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { Presence } from "phoenix";
import { connect, eventually, makeSocket, startTako } from "./helpers.js";

const ADMIN = "compat-admin-token";
const CLIENT = "compat-client-token";
let tako;
const children = [];
before(async () => {
  // A short heartbeat timeout (seconds) so a frozen client leaves quickly.
  tako = await startTako({ TAKO_ADMIN_TOKEN: ADMIN, HOLOQUEST_API_TOKEN: CLIENT, TAKO_HEARTBEAT_TIMEOUT: "2" });
});
after(async () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  await tako.cleanup();
});

/** A socket that heartbeats often enough for the 2 s timeout. */
const live = (id, opts = {}) => makeSocket(tako, { userToken: id }, { heartbeatIntervalMs: 300, ...opts });

/** Joins `notifications` with a Presence attached before the join, as an app would. */
function presentOn(socket, topic = "notifications") {
  const channel = socket.channel(topic, { presence: "full" });
  const presence = new Presence(channel);
  const names = () =>
    presence
      .list((_key, { metas }) => metas.map((m) => m.nickname))
      .flat()
      .sort();
  const joined = new Promise((resolve, reject) => {
    channel.join().receive("ok", resolve).receive("error", reject).receive("timeout", reject);
  });
  return { channel, presence, names, joined };
}

/** A client in another process; resolves once it joined. */
function spawnClient(id) {
  const child = spawn(process.execPath, [fileURLToPath(new URL("./present-client.js", import.meta.url)), id, tako.socketUrl], { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  return new Promise((resolve, reject) => {
    child.stdout.on("data", (d) => String(d).includes("joined") && resolve(child));
    child.once("exit", (code) => reject(new Error(`client exited ${code}`)));
  });
}

async function rename(id, nickname) {
  const res = await fetch(`${tako.url}/api/json/accounts/users/${id}`, {
    method: "PATCH",
    headers: tako.headers(CLIENT),
    body: `{"data":{"type":"user","attributes":{"nickname":"${nickname}"}}}`,
  });
  assert.equal(res.status, 200);
}

const same = (view, expected) => JSON.stringify(view.names()) === JSON.stringify(expected);

describe("presence", () => {
  it("lists exactly who is online through joins, a rename, a leave, a kill and a freeze", async () => {
    const [alice, bob, cleo, dan] = await Promise.all(["Alice", "Bob", "Cleo", "Dan"].map((n) => tako.register(n)));
    const a = presentOn(await connect(live(alice)));
    await a.joined;
    await eventually(() => same(a, ["Alice"]), "alice sees herself");

    const bSocket = await connect(live(bob));
    const b = presentOn(bSocket);
    await b.joined;
    await eventually(() => same(a, ["Alice", "Bob"]) && same(b, ["Alice", "Bob"]), "alice and bob");

    const cleoProcess = await spawnClient(cleo);
    await eventually(() => same(a, ["Alice", "Bob", "Cleo"]) && same(b, ["Alice", "Bob", "Cleo"]), "three clients");
    // The key is a public handle, never the UUID.
    const keys = a.presence.list((key) => key);
    assert.equal(keys.length, 3);
    for (const key of keys) assert.ok(![alice, bob, cleo].some((id) => id.includes(key) || key.includes(id.slice(0, 8))));
    const meta = a.presence.list((_k, { metas }) => metas[0]).find((m) => m.nickname === "Alice");
    assert.ok(meta.online_at > 1_600_000_000_000 && typeof meta.phx_ref === "string");

    // A second tab of alice: one key, two metas; closing it leaves the other.
    const a2Socket = await connect(live(alice));
    const a2 = presentOn(a2Socket);
    await a2.joined;
    await eventually(() => same(b, ["Alice", "Alice", "Bob", "Cleo"]), "two metas for alice");
    assert.equal(b.presence.list((key) => key).length, 3);
    a2Socket.disconnect();
    await eventually(() => same(b, ["Alice", "Bob", "Cleo"]), "second tab gone");

    // A nickname change through the HTTP API.
    await rename(bob, "Bobby");
    await eventually(() => same(a, ["Alice", "Bobby", "Cleo"]) && same(b, ["Alice", "Bobby", "Cleo"]), "rename");
    const renamed = a.presence.list((_k, { metas }) => metas[0]).find((m) => m.nickname === "Bobby");
    assert.equal(typeof renamed.phx_ref_prev, "string");

    // Bob leaves the channel.
    await new Promise((resolve) => b.channel.leave().receive("ok", resolve));
    await eventually(() => same(a, ["Alice", "Cleo"]), "bob left");

    // Cleo's process is killed.
    cleoProcess.kill("SIGKILL");
    await eventually(() => same(a, ["Alice"]), "killed client left", 3000);

    // Dan's process freezes (no FIN, no heartbeats): it leaves within the heartbeat timeout.
    const danProcess = await spawnClient(dan);
    await eventually(() => same(a, ["Alice", "Dan"]), "dan joined");
    danProcess.kill("SIGSTOP");
    const frozenAt = Date.now();
    await eventually(() => same(a, ["Alice"]), "frozen client left", 4000);
    assert.ok(Date.now() - frozenAt >= 1500, "not before the timeout");
    danProcess.kill("SIGKILL");

    // The operators' view agrees.
    const res = await fetch(`${tako.url}/api/presence/notifications`, { headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(res.status, 200);
    const list = await res.json();
    assert.equal(list.users, 1);
    assert.equal(list.connections, 1);
    assert.deepEqual(Object.values(list.presences).map((p) => p.metas[0].nickname), ["Alice"]);
    const refused = await fetch(`${tako.url}/api/presence/notifications`, { headers: { authorization: `Bearer ${CLIENT}` } });
    assert.equal(refused.status, 403);
    a.channel.socket.disconnect();
    bSocket.disconnect();
  });
});
