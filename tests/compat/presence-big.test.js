// A big `notifications` topic: the server sends its presence state in bounded frames (a
// `presence_state` and `presence_diff`s carrying the rest), and the phoenix client's Presence
// class must still list exactly everyone.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Presence } from "phoenix";
import { connect, eventually, makeSocket, startTako } from "./helpers.js";

const CLIENT = "compat-client-token";
const USERS = 600;
/** The engine's bound on a presence frame (channels' presence::MAX_FRAME_BYTES). */
const FRAME_LIMIT = 16 * 1024;
let tako;
const sockets = [];
before(async () => {
  tako = await startTako({ HOLOQUEST_API_TOKEN: CLIENT });
});
after(async () => {
  for (const socket of sockets) socket.disconnect();
  await tako.cleanup();
});

// As long as nicknames go (20 characters).
const nickname = (i) => `Adventurer${String(i).padStart(4, "0")}Guilds`;

/** Joins `notifications` with a Presence attached, as the web client does. */
async function present(id, onFrame) {
  const socket = makeSocket(tako, { userToken: id });
  if (onFrame) socket.onMessage(onFrame);
  sockets.push(socket);
  await connect(socket);
  const channel = socket.channel("notifications", { presence: "full" });
  const presence = new Presence(channel);
  await new Promise((resolve, reject) => channel.join().receive("ok", resolve).receive("error", reject).receive("timeout", reject));
  const names = () => presence.list((_key, { metas }) => metas.map((m) => m.nickname)).flat().sort();
  return { socket, presence, names };
}

describe("presence of a big topic", () => {
  it("lists exactly everyone although the state arrives in bounded frames", async () => {
    const ids = [];
    for (let i = 0; i < USERS; i += 50) {
      ids.push(...(await Promise.all(Array.from({ length: Math.min(50, USERS - i) }, (_, j) => tako.register(nickname(i + j))))));
    }
    // Everyone online: the first 20 users with two tabs each, the rest with one.
    const tabs = ids.flatMap((id, i) => (i < 20 ? [id, id] : [id]));
    for (let i = 0; i < tabs.length; i += 100) await Promise.all(tabs.slice(i, i + 100).map((id) => present(id)));
    const expected = [...ids.map((_, i) => nickname(i)), ...ids.slice(0, 20).map((_, i) => nickname(i))].sort();

    // Late joiners, on a v2 socket and watching the frames the server sends.
    const watched = [];
    const late = await Promise.all(
      ids.slice(0, 3).map((id) => present(id, (msg) => msg.topic === "notifications" && watched.push(msg))),
    );
    const withLate = [...expected, ...ids.slice(0, 3).map((_, i) => nickname(i))].sort();
    await eventually(() => late.every((view) => JSON.stringify(view.names()) === JSON.stringify(withLate)), "late joiners list everyone", 10000);
    const states = watched.filter((m) => m.event === "presence_state");
    assert.equal(states.length, 3, "one presence_state per late joiner");
    const stateKeys = Object.keys(states[0].payload).length;
    assert.ok(stateKeys > 0 && stateKeys < USERS, `the first frame holds a chunk of the ${USERS} keys, not all (${stateKeys})`);
    for (const m of watched) {
      const size = JSON.stringify([m.join_ref, m.ref, m.topic, m.event, m.payload]).length;
      assert.ok(size <= FRAME_LIMIT + 1024, `a ${size}-byte ${m.event}`);
    }

    // Everyone else agrees too (their views were built from the diffs as people joined).
    const keys = late[0].presence.list((key) => key);
    assert.equal(keys.length, USERS);
    assert.equal(late[0].presence.list((_k, { metas }) => metas.length).reduce((a, b) => a + b), withLate.length);
  });
});
