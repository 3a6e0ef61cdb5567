// The rally verified by the server (issue 14), seen by the official phoenix client: a scan
// over HTTP reaches the other clients on the event's topic, completion is announced once
// (also when two cluster nodes take the deciding scans at the same moment), and in verified
// mode clients' own announcements reach nobody.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { collect, connect, eventually, join, makeSocket, push, sleep, startTako } from "./helpers.js";

const ADMIN = "rally-admin-token";
const CLIENT = "rally-client-token";

async function call(node, method, path, body, token = CLIENT) {
  const res = await fetch(`${node.url}${path}`, {
    method,
    headers: node.headers(token),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function setUpEvent(node, required, stamps) {
  const event = await call(node, "POST", "/api/json/events", {
    data: { type: "event", id: "compat-rally", attributes: { name: "Compat", stamps_required: required } },
  }, ADMIN);
  assert.equal(event.status, 201, JSON.stringify(event.body));
  const codes = [];
  for (let i = 0; i < stamps; i++) {
    const stamp = await call(node, "POST", "/api/json/events/compat-rally/stamps", {
      data: { type: "stamp", attributes: { name: `Booth ${i}` } },
    }, ADMIN);
    assert.equal(stamp.status, 201);
    codes.push(stamp.body.meta.qr);
  }
  return codes;
}

const scan = (node, user, code) =>
  call(node, "POST", `/api/json/accounts/users/${user}/scans`, { data: { type: "scan", attributes: { code } } });

describe("the rally on one node (TAKO_STAMPS=verified)", () => {
  let server;
  before(async () => {
    server = await startTako({
      HOLOQUEST_API_TOKEN: CLIENT,
      TAKO_ADMIN_TOKEN: ADMIN,
      TAKO_STAMPS: "verified",
      TAKO_SCAN_URL: "https://app.holoquest.example/sc/{code}",
    });
  });
  after(async () => server.cleanup());

  it("broadcasts a scan to other clients and completion once", async () => {
    const codes = await setUpEvent(server, 2, 3);
    const watcherId = await server.register("Watcher");
    const kiaraId = await server.register("Kiara");
    const watcher = await connect(makeSocket(server, { userToken: watcherId }));
    const channel = await join(watcher, "notifications");
    const collected = collect(channel, "collected-broadcast");
    const completed = collect(channel, "rally-completed");

    const first = await scan(server, kiaraId, codes[0]);
    assert.equal(first.status, 201);
    assert.deepEqual(first.body.meta.progress, { collected: 1, required: 2, completed: false });
    await eventually(() => collected.length === 1, "the first collected-broadcast");
    assert.deepEqual(collected[0], { nickname: "Kiara" });

    assert.equal((await scan(server, kiaraId, codes[0])).status, 200);
    const second = await scan(server, kiaraId, codes[1]);
    assert.deepEqual(second.body.meta.progress, { collected: 2, required: 2, completed: true });
    await eventually(() => completed.length === 1, "rally-completed");
    assert.deepEqual(completed[0], { nickname: "Kiara" });
    assert.equal((await scan(server, kiaraId, codes[2])).status, 201);
    await eventually(() => collected.length === 3, "the third collected-broadcast");
    await sleep(300);
    assert.equal(collected.length, 3, "a repeated scan is not announced");
    assert.equal(completed.length, 1, "completion is announced once");

    const user = await call(server, "GET", `/api/json/accounts/users/${kiaraId}`);
    assert.equal(user.body.data.attributes.stamps_collected, 3);
    watcher.disconnect();
  });

  it("refuses clients' own announcements, which reach nobody", async () => {
    const cheatId = await server.register("Cheat");
    const watcherId = await server.register("Watcher2");
    const cheat = await connect(makeSocket(server, { userToken: cheatId }));
    const watcher = await connect(makeSocket(server, { userToken: watcherId }));
    const cheatChannel = await join(cheat, "notifications");
    const watcherChannel = await join(watcher, "notifications");
    const heard = [...["collected-broadcast", "rally-completed", "shout"].map((e) => collect(watcherChannel, e))];
    for (const [event, payload] of [["collected", { nickname: "Cheat" }], ["rally-completed", { nickname: "Cheat" }], ["shout", { text: "hi" }]]) {
      assert.deepEqual(await push(cheatChannel, event, payload), ["error", { reason: "stamps are verified by the server" }]);
    }
    await sleep(300);
    assert.deepEqual(heard, [[], [], []]);
    const patch = await call(server, "PATCH", `/api/json/accounts/users/${cheatId}`, {
      data: { type: "user", attributes: { stamps_collected: 999 } },
    });
    assert.equal(patch.status, 403);
    assert.equal(patch.body.errors[0].code, "stamps_are_verified");
    cheat.disconnect();
    watcher.disconnect();
  });
});

const PG = process.env.TAKO_TEST_DATABASE_URL;
const REDIS = process.env.TAKO_TEST_REDIS_URL;

describe("the rally on two cluster nodes", { skip: !(PG && REDIS) && "needs TAKO_TEST_DATABASE_URL and TAKO_TEST_REDIS_URL" }, () => {
  let nodes = [];
  // Named after the run's database, so scripts/test drops it at the end whatever happens here.
  const name = PG ? `${PG.match(/\/([^/?]*)(\?.*)?$/)[1].slice(0, 40)}_r${process.pid}_${Date.now()}` : "";
  before(async () => {
    execFileSync("psql", [PG, "-q", "-c", `CREATE DATABASE "${name}"`]);
    const env = {
      DATABASE_URL: PG.replace(/\/[^/?]*(\?.*)?$/, `/${name}`),
      TAKO_PUBSUB_URL: REDIS,
      TAKO_CLUSTER: `rally_${process.pid}_${Date.now()}`,
      TAKO_ADMIN_TOKEN: ADMIN,
      HOLOQUEST_API_TOKEN: CLIENT,
    };
    // One after the other: the first creates the schema and the shared rally secret.
    nodes.push(await startTako(env));
    nodes.push(await startTako(env));
    await sleep(300);
  });
  after(async () => {
    for (const node of nodes) {
      await node.stop();
      await node.cleanup();
    }
    execFileSync("psql", [PG, "-q", "-c", `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`]);
  });

  it("announces completion once when both nodes take a deciding scan at once", async () => {
    const [a, b] = nodes;
    const codes = await setUpEvent(a, 2, 3);
    const watchers = [];
    for (const node of nodes) {
      const id = await node.register(`Watch${watchers.length}`);
      const socket = await connect(makeSocket(node, { userToken: id }));
      const channel = await join(socket, "notifications");
      watchers.push({ socket, collected: collect(channel, "collected-broadcast"), completed: collect(channel, "rally-completed") });
    }
    const runners = [];
    for (let i = 0; i < 5; i++) runners.push(await a.register(`Runner${i}`));
    for (const id of runners) assert.equal((await scan(a, id, codes[0])).status, 201);
    // Each runner's second and third stamps at the same moment, one on each node: both
    // reach the count, one completion each.
    const results = await Promise.all(runners.flatMap((id) => [scan(a, id, codes[1]), scan(b, id, codes[2])]));
    assert.deepEqual(results.map((r) => r.status), Array(10).fill(201));
    // The same stamp from both nodes at once counts once.
    const late = await b.register("Late");
    const twice = await Promise.all([scan(a, late, codes[0]), scan(b, late, codes[0])]);
    assert.deepEqual(twice.map((r) => r.status).sort(), [200, 201]);
    for (const w of watchers) {
      await eventually(() => w.completed.length >= 5 && w.collected.length >= 16, "every announcement on every node");
    }
    await sleep(500);
    for (const w of watchers) {
      assert.equal(w.collected.length, 16);
      assert.deepEqual(w.completed.map((p) => p.nickname).sort(), runners.map((_, i) => `Runner${i}`).sort());
      w.socket.disconnect();
    }
  });
});
