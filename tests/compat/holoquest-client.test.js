// HoloQuest's Tako-era web client, as it talks to the server: its exact request bodies (built by
// string interpolation), its headers, the trailing slash on POST users, the nicknames its
// `hololive-nick-gen` dependency generates, and its `phoenix` channel usage.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { generateNickname } from "hololive-nick-gen";
import { collect, connect, eventually, join, makeSocket, sleep, startTako, TAKO_BIN } from "./helpers.js";

const CLIENT_TOKEN = "compat-client-token";
const ADMIN = "compat-admin-token";
let tako;
let client;
before(async () => {
  // Registrations are rate limited per address; this suite registers 600 users from one.
  tako = await startTako({ TAKO_ADMIN_TOKEN: ADMIN, HOLOQUEST_API_TOKEN: CLIENT_TOKEN, TAKO_REGISTRATIONS_PER_MINUTE: "0" });
  client = legacyClient(`${tako.url}/api/json`, CLIENT_TOKEN);
});
after(async () => {
  await tako.cleanup();
});

/** The client's API functions, with its exact URLs, headers and bodies. */
function legacyClient(apiServerURL, apiToken) {
  const defaultHeaders = {
    Accept: "application/vnd.api+json",
    "Content-Type": "application/vnd.api+json",
    Authorization: `Bearer ${apiToken}`,
  };
  const call = async (url, init) => {
    const response = await fetch(url, init);
    return { status: response.status, json: await response.json() };
  };
  return {
    registerUser: (nickname = "") =>
      call(`${apiServerURL}/accounts/users/`, {
        method: "POST",
        headers: defaultHeaders,
        body: `{"data":{"type":"user","attributes":{"nickname":"${nickname}"}}}`,
      }),
    setNickname: (userId, nickname) =>
      call(`${apiServerURL}/accounts/users/${userId}`, {
        method: "PATCH",
        headers: defaultHeaders,
        body: `{"data":{"type":"user","attributes":{"nickname":"${nickname}"}}}`,
      }),
    fetchLeaderboard: () => call(`${apiServerURL}/leaderboard`, { method: "GET", headers: defaultHeaders }),
    updateScore: (userId, score) =>
      call(`${apiServerURL}/accounts/users/${userId}`, {
        method: "PATCH",
        headers: defaultHeaders,
        body: `{"data":{"type":"user","attributes":{"stamps_collected":${score}}}}`,
      }),
  };
}

/**
 * Every name `generateNickname()` can return, read from the package itself: it draws an
 * adjective and then a fan name with `Math.random()`, so sweeping each draw over [0, 1) finds
 * every entry of both lists (1000 steps: each entry spans at least 1/39 of the range).
 */
function everyGeneratedNickname() {
  const real = Math.random;
  const generate = (first, second) => {
    const draws = [first, second];
    Math.random = () => draws.shift();
    try {
      return generateNickname();
    } finally {
      Math.random = real;
    }
  };
  const steps = 1000;
  const sweep = [...Array(steps).keys()].map((k) => (k + 0.5) / steps);
  // One draw value per distinct adjective (the first part), and per distinct fan name.
  const adjectives = new Map();
  const fans = new Map();
  for (const r of sweep) {
    const byAdjective = generate(r, 0);
    adjectives.set(byAdjective.slice(0, byAdjective.indexOf("_")), r);
    const byFan = generate(0, r);
    fans.set(byFan.slice(byFan.indexOf("_") + 1), r);
  }
  const names = new Set();
  for (const a of adjectives.values()) for (const f of fans.values()) names.add(generate(a, f));
  return { names: [...names], adjectives: adjectives.size, fans: fans.size };
}

describe("the web client's registration", () => {
  it("every name hololive-nick-gen 1.0.1 generates registers and gets a user", async () => {
    const { names, adjectives, fans } = everyGeneratedNickname();
    assert.equal(adjectives, 15);
    assert.equal(fans, 39);
    assert.equal(names.length, 585);
    for (const name of ["Lovely_Houshou", "Sneaky_Hoshiyomi", "Confident_Watamate", "Robust_Watamate", "Sneaky_Kabumin", "Sneaky_Kaitakusha", "Confident_Mion_Family"]) {
      assert.ok(names.includes(name), name);
    }
    const refused = [];
    for (const name of names) {
      const { status, json } = await client.registerUser(name);
      // The client reads `data.id`; without it, it never has a user.
      if (status !== 201 || typeof json.data?.id !== "string" || json.data.attributes.nickname !== name) {
        refused.push(`${name}: ${status} ${JSON.stringify(json.errors ?? json)}`);
      }
    }
    assert.deepEqual(refused, []);
  });

  it("registers without a nickname, renames, scores and reads the whole leaderboard", async () => {
    const { status, json } = await client.registerUser();
    assert.equal(status, 201);
    const id = json.data.id;
    assert.equal(json.data.attributes.nickname, null);

    // The client checks for a top-level `errors` array after a nickname change.
    const renamed = await client.setNickname(id, "Wise_Takodachi");
    assert.equal(renamed.status, 200);
    assert.equal(renamed.json.errors, undefined);
    assert.equal(renamed.json.data.attributes.nickname, "Wise_Takodachi");
    const refused = await client.setNickname(id, "fuck");
    assert.equal(refused.status, 400);
    assert.equal(refused.json.errors[0].source.pointer, "/data/attributes/nickname");
    // A quote breaks the client's interpolated JSON: a clear 400, not a 500.
    const broken = await client.setNickname(id, 'Say "hi"');
    assert.equal(broken.status, 400);
    assert.equal(broken.json.errors[0].code, "invalid_body");

    const scored = await client.updateScore(id, 7);
    assert.equal(scored.status, 200);
    assert.equal(scored.json.data.attributes.stamps_collected, 7);

    // Every ranked user (the 585 above and this one), not the first 100: the client shows
    // them all and bolds its own row.
    const board = await client.fetchLeaderboard();
    assert.equal(board.status, 200);
    assert.ok(board.json.data.length >= 586, `${board.json.data.length} rows`);
    assert.deepEqual(board.json.data[0], { nickname: "Wise_Takodachi", stamps_collected: 7, rank: 1 });
    assert.ok(board.json.data.every((row) => typeof row.nickname === "string" && Number.isInteger(row.stamps_collected)));
  });
});

describe("the web client's channel events", () => {
  it("collected and rally-completed reach everyone with the sender's stored nickname", async () => {
    const alice = (await client.registerUser("Lucid_Kronie")).json.data.id;
    const bob = (await client.registerUser("Calm_Sapling")).json.data.id;
    const aliceSocket = await connect(makeSocket(tako, { userToken: alice }));
    const bobSocket = await connect(makeSocket(tako, { userToken: bob }));
    const a = await join(aliceSocket, "notifications");
    const b = await join(bobSocket, "notifications");
    const heard = collect(b, "collected-broadcast");
    const completed = collect(b, "rally-completed");

    // ChannelsClient.pushCollected / pushRallyCompleted: the client's own nickname.
    a.push("collected", { nickname: "Lucid_Kronie" });
    a.push("rally-completed", { nickname: "Lucid_Kronie" });
    await eventually(() => heard.length === 1 && completed.length === 1, "both events");
    assert.deepEqual(heard[0], { nickname: "Lucid_Kronie" });
    assert.deepEqual(completed[0], { nickname: "Lucid_Kronie" });

    // A claim of another name (or profanity) is not what others see.
    a.push("collected", { nickname: "Calm_Sapling" });
    await eventually(() => heard.length === 2, "second collected");
    assert.deepEqual(heard[1], { nickname: "Lucid_Kronie" });

    // After a nickname change the broadcasts follow it.
    await client.setNickname(alice, "Brave_Kronie");
    a.push("collected", { nickname: "Lucid_Kronie" });
    await eventually(() => heard.length === 3, "third collected");
    assert.deepEqual(heard[2], { nickname: "Brave_Kronie" });
    aliceSocket.disconnect();
    bobSocket.disconnect();
  });

  it("the seed README's msg broadcast with a user_id reaches that user alone", async () => {
    const run = promisify(execFile);
    const target = (await client.registerUser("Silly_Chumbud")).json.data.id;
    const other = (await client.registerUser("Silly_Gator")).json.data.id;
    const targetSocket = await connect(makeSocket(tako, { userToken: target }));
    const otherSocket = await connect(makeSocket(tako, { userToken: other }));
    const t = await join(targetSocket, "notifications:scans");
    const o = await join(otherSocket, "notifications:scans");
    const targetMsgs = collect(t, "msg");
    const otherMsgs = collect(o, "msg");

    const payload = JSON.stringify({ user_id: target, message: "Come to booth A-12" });
    const { stdout } = await run(TAKO_BIN, ["broadcast", "notifications:scans", "msg", payload], {
      env: { ...process.env, TAKO_URL: tako.url, TAKO_ADMIN_TOKEN: ADMIN },
    });
    assert.match(stdout, /delivered live/);
    await eventually(() => targetMsgs.length === 1, "msg to its user");
    assert.equal(targetMsgs[0].message, "Come to booth A-12");
    assert.equal(targetMsgs[0].user_id, target);
    await sleep(200);
    assert.deepEqual(otherMsgs, [], "nobody else hears it, nor the user's UUID");
    targetSocket.disconnect();
    otherSocket.disconnect();
  });
});
