// Several real Tako processes over the machine's Redis and one PostgreSQL database: clients on
// different nodes see each other as if there were one server. Needs TAKO_TEST_DATABASE_URL and
// TAKO_TEST_REDIS_URL (scripts/test sets both) and fails loudly without them.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { Presence } from "phoenix";
import { collect, connect, eventually, freePort, join, makeSocket, push, sleep, startTako } from "./helpers.js";

const PG = process.env.TAKO_TEST_DATABASE_URL;
const REDIS = process.env.TAKO_TEST_REDIS_URL;
if (!PG || !REDIS) throw new Error("cluster tests need TAKO_TEST_DATABASE_URL and TAKO_TEST_REDIS_URL (scripts/test sets them)");

const ADMIN = "cluster-admin-token";
const CLIENT = "cluster-client-token";

/** Databases this file made: dropped when the process exits, whether the tests passed or not. */
const created = [];
process.on("exit", () => {
  for (const name of created) {
    try {
      execFileSync("psql", [PG, "-q", "-c", `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`]);
    } catch (e) {
      console.error(`warning: test database ${name} was not dropped: ${e.message}`);
    }
  }
});

/** A fresh PostgreSQL database next to the one the run was given (its name starts with that
 * one's, so scripts/test drops it at the end in any case). */
function freshDatabase() {
  const base = PG.match(/\/([^/?]*)(\?.*)?$/)[1].slice(0, 40);
  const name = `${base}_c${process.pid}_${Date.now()}`;
  execFileSync("psql", [PG, "-q", "-c", `CREATE DATABASE "${name}"`]);
  created.push(name);
  return PG.replace(/\/[^/?]*(\?.*)?$/, `/${name}`);
}

/** Nodes of one cluster: same database, same Redis, same cluster name. */
async function startCluster(count, { redis = REDIS, extra = {} } = {}) {
  const env = {
    DATABASE_URL: freshDatabase(),
    TAKO_PUBSUB_URL: redis,
    TAKO_CLUSTER: `compat_${process.pid}_${Date.now()}`,
    TAKO_NODE_TIMEOUT: "2",
    TAKO_ADMIN_TOKEN: ADMIN,
    HOLOQUEST_API_TOKEN: CLIENT,
    ...extra,
  };
  const nodes = [];
  for (let i = 0; i < count; i++) nodes.push(await startTako(env));
  // Let the nodes hear each other's first heartbeats.
  await sleep(300);
  return nodes;
}

async function sendMessage(node, userId, message) {
  const res = await fetch(`${node.url}/api/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN}` },
    body: JSON.stringify({ user_id: userId, message }),
  });
  assert.equal(res.status, 202);
  return res.json();
}

function presentOn(socket, topic = "notifications") {
  const channel = socket.channel(topic, { presence: "full" });
  const presence = new Presence(channel);
  const names = () => presence.list((_k, { metas }) => metas.map((m) => m.nickname)).flat().sort();
  const joined = new Promise((resolve, reject) => channel.join().receive("ok", resolve).receive("error", reject));
  return { channel, presence, names, joined };
}
const same = (view, expected) => JSON.stringify(view.names()) === JSON.stringify(expected);
const live = (node, id) => makeSocket(node, { userToken: id }, { heartbeatIntervalMs: 300 });

describe("a cluster of three nodes", () => {
  let nodes;
  before(async () => {
    nodes = await startCluster(3);
  });
  after(async () => {
    for (const node of nodes) await node.cleanup();
  });

  it("carries every notifications event between clients on different nodes", async () => {
    const [a, b, c] = nodes;
    const aliceId = await a.register("ClusterAlice");
    const bobId = await b.register("ClusterBob");
    const alice = await connect(makeSocket(a, { userToken: aliceId }));
    const bob = await connect(makeSocket(b, { userToken: bobId }));
    for (const topic of ["notifications", "notifications:scans"]) {
      const ac = await join(alice, topic);
      const bc = await join(bob, topic);
      const aCollected = collect(ac, "collected-broadcast");
      const bCollected = collect(bc, "collected-broadcast");
      const aCompleted = collect(ac, "rally-completed");
      const aShout = collect(ac, "shout");
      const bPing = collect(bc, "ping");

      await push(bc, "collected", { nickname: "ClusterBob" });
      await eventually(() => aCollected.length === 1 && bCollected.length === 1, "collected-broadcast on both nodes");
      assert.deepEqual(aCollected[0], { nickname: "ClusterBob" });
      await push(bc, "rally-completed", { nickname: "ClusterBob" });
      await eventually(() => aCompleted.length === 1, "rally-completed across nodes");
      await push(bc, "shout", { body: "from B" });
      await eventually(() => aShout.length === 1, "shout across nodes");
      assert.deepEqual(aShout[0], { body: "from B" });
      assert.deepEqual(await push(ac, "ping", { n: 1 }), ["ok", { n: 1 }]);

      // The server-wide ping, asked of node C, reaches B's client.
      const res = await fetch(`${c.url}/api/ping`, { method: "POST", headers: { authorization: `Bearer ${ADMIN}` } });
      assert.equal(res.status, 202);
      await eventually(() => bPing.length >= 1, "ping from node C");
      ac.leave();
      bc.leave();
    }

    // A message sent through node C reaches Alice on node A only, live.
    const aliceChannel = await join(alice, "notifications");
    const bobChannel = await join(bob, "notifications");
    const aMsg = collect(aliceChannel, "msg");
    const bMsg = collect(bobChannel, "msg");
    // Node C answers at once (it holds no socket of Alice's: it does not wait for node A);
    // the message's status, on any node, tells when node A's socket wrote it.
    const status = await sendMessage(c, aliceId, "hello from C");
    assert.equal(status.delivered, false);
    await eventually(() => aMsg.length === 1, "msg across nodes");
    let delivered = false;
    for (let i = 0; i < 50 && !delivered; i++) {
      const res = await fetch(`${c.url}/api/messages/${status.id}`, { headers: { authorization: `Bearer ${ADMIN}` } });
      delivered = (await res.json()).delivered;
      if (!delivered) await sleep(20);
    }
    assert.ok(delivered, "marked delivered once node A's socket wrote it");
    assert.equal(aMsg[0].message, "hello from C");
    await sleep(200);
    assert.equal(bMsg.length, 0);
    alice.disconnect();
    bob.disconnect();
  });

  it("keeps messages for offline users and delivers them once, on whichever node they join", async () => {
    const [a, b, c] = nodes;
    const carolId = await a.register("ClusterCarol");
    // Storing for an offline user waits for no other node (it took 0.5 s when it did).
    const started = performance.now();
    const first = await sendMessage(a, carolId, "one");
    assert.ok(performance.now() - started < 450, `answered in ${performance.now() - started} ms`);
    const second = await sendMessage(c, carolId, "two");
    assert.equal(first.delivered, false);
    assert.equal(second.delivered, false);
    const carol = await connect(makeSocket(b, { userToken: carolId }));
    const got = collect(await join(carol, "notifications"), "msg");
    await eventually(() => got.length === 2, "both waiting messages on node B");
    assert.deepEqual(got.map((m) => m.message), ["one", "two"]);
    const again = await connect(makeSocket(c, { userToken: carolId }));
    const later = collect(await join(again, "notifications"), "msg");
    await sleep(300);
    assert.equal(later.length, 0, "delivered once");
    carol.disconnect();
    again.disconnect();
  });

  it("shows one presence list on every node, and heals when a node is killed", async () => {
    const [a, b, c] = nodes;
    const ids = [await a.register("PresA"), await b.register("PresB"), await c.register("PresC")];
    const sockets = await Promise.all(ids.map((id, i) => connect(live(nodes[i], id))));
    const views = sockets.map((s) => presentOn(s, "notifications:presence"));
    await Promise.all(views.map((v) => v.joined));
    for (const view of views) await eventually(() => same(view, ["PresA", "PresB", "PresC"]), `all three everywhere (saw ${view.names()})`);

    // The admin route of any node lists users of every node.
    const res = await fetch(`${a.url}/api/presence/notifications:presence`, { headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(res.status, 200);
    const listed = JSON.stringify(await res.json());
    for (const name of ["PresA", "PresB", "PresC"]) assert.ok(listed.includes(name), `${name} in ${listed}`);

    // A rename through node B's API reaches the presence lists on every node.
    const renamed = await fetch(`${b.url}/api/json/accounts/users/${ids[0]}`, {
      method: "PATCH",
      headers: b.headers(CLIENT),
      body: '{"data":{"type":"user","attributes":{"nickname":"PresA2"}}}',
    });
    assert.equal(renamed.status, 200);
    for (const view of views) await eventually(() => same(view, ["PresA2", "PresB", "PresC"]), `rename everywhere (saw ${view.names()})`);

    // kill -9 node C (its socket still open, so no leave is sent): its user leaves A's and B's
    // lists within the node timeout (2 s) of the kill, plus a margin for the diff's coalescing
    // (50 ms) and delivery: 1.93 s measured, where checking expiry at each 1 s heartbeat took
    // 2.3–2.8 s.
    const killed = Date.now();
    c.proc.kill("SIGKILL");
    sockets[2].disconnect();
    for (const view of views.slice(0, 2)) await eventually(() => same(view, ["PresA2", "PresB"]), `C's user gone (saw ${view.names()})`, 8000);
    const healed = Date.now() - killed;
    assert.ok(healed < 2000 + 250, `C's user left ${healed} ms after the kill (node timeout 2000 ms)`);
    sockets[0].disconnect();
    sockets[1].disconnect();
  });
});

describe("deleting a user in a cluster", () => {
  let nodes;
  before(async () => {
    nodes = await startCluster(2);
  });
  after(async () => {
    for (const node of nodes) await node.cleanup();
  });

  it("closes its sockets on every node and no node lets it back in", async () => {
    const [a, b] = nodes;
    const id = await a.register("Doomed");
    const socket = await connect(makeSocket(b, { userToken: id }, { reconnectAfterMs: () => 60000 }));
    const closes = [];
    socket.onClose((e) => closes.push(e?.code));
    const res = await fetch(`${a.url}/api/json/accounts/users/${id}`, { method: "DELETE", headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(res.status, 204);
    await eventually(() => closes.length > 0, "socket on node B closed");
    socket.disconnect();
    // Node B had the user in memory from its connect; it must ask again and refuse.
    await assert.rejects(connect(makeSocket(b, { userToken: id })));
  });
});

describe("Redis going away", () => {
  let redis, port, nodes;
  const startRedis = () => {
    redis = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
    return eventually(() => {
      try {
        return execFileSync("redis-cli", ["-p", String(port), "ping"]).toString().includes("PONG");
      } catch {
        return false;
      }
    }, "redis up");
  };
  before(async () => {
    port = await freePort();
    await startRedis();
    nodes = await startCluster(2, { redis: `redis://127.0.0.1:${port}` });
  });
  after(async () => {
    for (const node of nodes) await node.cleanup();
    redis?.kill("SIGKILL");
  });

  it("keeps local delivery, reports it in readiness, and heals when Redis returns", async () => {
    const [a, b] = nodes;
    const u1 = await a.register("RedisOne");
    const u2 = await b.register("RedisTwo");
    const s1 = await connect(live(a, u1));
    const s2 = await connect(live(b, u2));
    const v1 = presentOn(s1, "notifications:redis");
    const v2 = presentOn(s2, "notifications:redis");
    await Promise.all([v1.joined, v2.joined]);
    await eventually(() => same(v1, ["RedisOne", "RedisTwo"]), "presence across nodes before the outage");
    const got1 = collect(v1.channel, "collected-broadcast");
    const msgs2 = collect(v2.channel, "msg");

    redis.kill("SIGKILL");
    await sleep(500);
    // A message sent through node A to a user on node B while no node can tell another: stored,
    // answered at once, and pushed by node B once Redis is back (not at B's user's next join).
    const during = await sendMessage(a, u2, "sent during the outage");
    assert.equal(during.delivered, false);
    // Local delivery still works on node A, and nothing crashed.
    await push(v1.channel, "collected", { nickname: "RedisOne" });
    await eventually(() => got1.length === 1, "local broadcast during the outage");
    const health = await fetch(`${a.url}/healthz`);
    assert.equal(health.status, 200);
    const ready = await fetch(`${a.url}/readyz`);
    assert.equal(ready.status, 503);
    assert.match(await ready.text(), /redis/i);

    await startRedis();
    // The link reconnects by itself and presence resyncs.
    const deadline = Date.now() + 15000;
    while ((await fetch(`${a.url}/readyz`)).status !== 200) {
      assert.ok(Date.now() < deadline, "node A ready again after Redis returned");
      await sleep(100);
    }
    await eventually(() => same(v1, ["RedisOne", "RedisTwo"]) && same(v2, ["RedisOne", "RedisTwo"]), `presence healed (saw ${v1.names()} / ${v2.names()})`, 15000);
    const got2 = collect(v2.channel, "collected-broadcast");
    await push(v1.channel, "collected", { nickname: "RedisOne" });
    await eventually(() => got2.length === 1, "cross-node broadcast after Redis returned", 5000);
    await eventually(() => msgs2.length === 1, "the outage's message pushed once Redis returned", 5000);
    assert.equal(msgs2[0].id, during.id);
    await sleep(300);
    assert.equal(msgs2.length, 1, "pushed once");
    assert.equal(a.proc.exitCode, null);
    assert.equal(b.proc.exitCode, null);
    s1.disconnect();
    s2.disconnect();
  });

  it("catches up after the outage: deletions refused at once, renames and deletions applied when Redis returns", async () => {
    const [a, b] = nodes;
    const keep = await a.register("StaysHere");
    const doomed = await a.register("DoomedLater");
    const renamed = await a.register("OldName");
    const watcher = await connect(live(a, keep));
    const view = presentOn(watcher, "notifications:outage");
    const onB = await connect(makeSocket(b, { userToken: doomed }, { reconnectAfterMs: () => 60000 }));
    const closes = [];
    onB.onClose((e) => closes.push(e?.code));
    const renamedSocket = await connect(live(b, renamed));
    const renamedView = presentOn(renamedSocket, "notifications:outage");
    await Promise.all([view.joined, renamedView.joined]);
    await eventually(() => same(view, ["OldName", "StaysHere"]), `presence before the outage (saw ${view.names()})`);

    redis.kill("SIGKILL");
    await sleep(500);
    const admin = { authorization: `Bearer ${ADMIN}`, "content-type": "application/vnd.api+json", accept: "application/vnd.api+json" };
    let res = await fetch(`${a.url}/api/json/accounts/users/${doomed}`, { method: "DELETE", headers: admin });
    assert.equal(res.status, 204);
    res = await fetch(`${a.url}/api/json/accounts/users/${renamed}`, {
      method: "PATCH",
      headers: admin,
      body: JSON.stringify({ data: { type: "user", attributes: { nickname: "NewName" } } }),
    });
    assert.equal(res.status, 200);
    // Node B never heard of the deletion, yet refuses the deleted user at once: while the bus is
    // down it asks the database.
    await assert.rejects(connect(makeSocket(b, { userToken: doomed }, { reconnectAfterMs: () => 60000 }), 3000));

    await startRedis();
    await eventually(() => closes.length > 0, "the deleted user's socket on node B closed once Redis returned", 15000);
    await eventually(
      () => same(view, ["NewName", "StaysHere"]) && same(renamedView, ["NewName", "StaysHere"]),
      `the rename reached presence on both nodes (saw ${view.names()} / ${renamedView.names()})`,
      15000,
    );
    onB.disconnect();
    watcher.disconnect();
    renamedSocket.disconnect();
  });
});
