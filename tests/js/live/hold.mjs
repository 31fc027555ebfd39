// Holds many `callsUpdated` subscriptions open at once, over graphql-ws connections and
// graphql-sse streams, and measures how late each change arrives.
//
// Input (environment):
//   GATEWAY_URLS      http://…/graphql, comma-separated: each account's subscribers are
//                     spread over them in turn (replicas)
//   ACCOUNTS          JSON [[authorization, userId], ...]
//   WS_CONNECTIONS    graphql-ws connections per account
//   WS_SUBSCRIPTIONS  subscriptions per connection (all with the same arguments)
//   SSE_STREAMS       graphql-sse streams per account (one subscription each)
//   SECONDS           how long to hold them; SIZE: the page size
// Prints one JSON line: subscribers, updates, errors (the first 20, and a count of every
// one by code: `extensions.code` of each error in a `next` payload, `transport` for a
// subscription the client saw fail), and the delays (ms) from each change
// to its delivery. A change's instant is in the data: the live sandbox stamps
// startTime / activeTime / endTime with the moment it began to show that change.
import { connect, credentials, describe, sleep, subscriptionDocument } from "./clients.mjs";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const urls = env("GATEWAY_URLS").split(",");
const accounts = JSON.parse(env("ACCOUNTS"));
const wsConnections = Number(env("WS_CONNECTIONS"));
const wsSubscriptions = Number(env("WS_SUBSCRIPTIONS"));
const sseStreams = Number(env("SSE_STREAMS"));
const seconds = Number(env("SECONDS"));
const query = subscriptionDocument(process.env.SIZE ?? 25);

const subscribers = [];
const clients = [];
const errors = [];
const errorCodes = {};
const countError = (code) => {
  errorCodes[code] = (errorCodes[code] ?? 0) + 1;
};
const delays = [];
let turn = 0;

function stampOf(call, before) {
  // `transferring` comes and goes without a stamp of its own: not measured.
  if (call.state === "transferring" || before?.state === "transferring") return null;
  if (before && before.state === call.state) return null;
  const stamps = [call.startTime, call.activeTime, call.endTime].filter(Boolean).map(Date.parse);
  return stamps.length ? Math.max(...stamps) : null;
}

function subscribe(client, label) {
  const subscriber = { label, updates: 0, firstMs: null, errors: 0, ended: false, calls: null };
  const startedMs = Date.now();
  subscriber.dispose = client.subscribe(query, {
    next(result) {
      const receivedMs = Date.now();
      const update = result.data?.callsUpdated;
      if (result.errors?.length) {
        subscriber.errors += 1;
        for (const e of result.errors) countError(e.extensions?.code ?? "UNCODED");
        if (errors.length < 20) errors.push(result.errors.map((e) => e.extensions?.code ?? e.message));
      }
      if (!update) return;
      subscriber.updates += 1;
      const now = new Map(update.calls.map((c) => [c.id, c]));
      if (subscriber.calls === null) {
        subscriber.firstMs = receivedMs - startedMs;
      } else {
        for (const id of update.changed) {
          const stamp = stampOf(now.get(id), subscriber.calls.get(id));
          if (stamp !== null) delays.push(receivedMs - stamp);
        }
      }
      subscriber.calls = now;
    },
    error(error) {
      subscriber.ended = true;
      subscriber.errors += 1;
      countError("transport");
      if (errors.length < 20) errors.push(describe(error));
    },
    complete() {
      subscriber.ended = true;
    },
  });
  subscribers.push(subscriber);
}

for (const [authorization, userId] of accounts) {
  const headers = credentials(authorization, userId);
  for (let n = 0; n < wsConnections; n += 1) {
    const client = connect("ws", urls[turn++ % urls.length], headers, { lazy: false });
    clients.push(client);
    for (let s = 0; s < wsSubscriptions; s += 1) subscribe(client, `ws:${userId}:${n}`);
  }
  for (let n = 0; n < sseStreams; n += 1) {
    const client = connect("sse", urls[turn++ % urls.length], headers);
    clients.push(client);
    subscribe(client, `sse:${userId}:${n}`);
  }
}

await sleep(seconds * 1000);
const live = subscribers.filter((s) => !s.ended).length;
for (const subscriber of subscribers) subscriber.dispose();
await Promise.all(clients.map((client) => client.dispose()));

delays.sort((a, b) => a - b);
const quantile = (q) => (delays.length ? delays[Math.min(delays.length - 1, Math.floor(q * delays.length))] : null);
const counts = subscribers.map((s) => s.updates);
const firsts = subscribers.map((s) => s.firstMs).filter((ms) => ms !== null);
console.log(
  JSON.stringify({
    subscribers: subscribers.length,
    liveAtEnd: live,
    withoutUpdate: counts.filter((c) => c === 0).length,
    updates: counts.reduce((a, b) => a + b, 0),
    minUpdates: Math.min(...counts),
    maxUpdates: Math.max(...counts),
    firstUpdateMaxMs: firsts.length ? Math.max(...firsts) : null,
    errors,
    errorCodes,
    delays: { count: delays.length, p50: quantile(0.5), p95: quantile(0.95), max: delays.at(-1) ?? null },
  }),
);
