// A reference client watches `callsUpdated` on a live gateway in front of the live sandbox:
// subscribe, see the first update and then a change, unsubscribe; subscribe again (a new
// connection: the reconnect) and see the first update again; unsubscribe.
//
// Input (environment): CLIENT (ws | sse | apollo), GATEWAY_URL (http://…/graphql),
// AUTHORIZATION, USER_ID, SIZE (the page size), WAIT_MS (how long to wait for a change).
// Prints one JSON line: both sessions' updates (with the ms they arrived) and the
// client's connection events.
import { connect, credentials, describe, sleep, subscriptionDocument } from "./clients.mjs";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const kind = env("CLIENT");
const waitMs = Number(process.env.WAIT_MS ?? 30000);
const query = subscriptionDocument(process.env.SIZE ?? 5);
const client = connect(kind, env("GATEWAY_URL"), credentials(env("AUTHORIZATION"), env("USER_ID")));

// Runs one subscription until `enough(updates)` or the wait ends; then unsubscribes.
function watch(enough) {
  return new Promise((resolve) => {
    const session = { updates: [], errors: [], completed: false, unsubscribed: false };
    let dispose = () => {};
    const finish = () => {
      if (!session.unsubscribed) {
        session.unsubscribed = true;
        clearTimeout(timer);
        dispose();
        resolve(session);
      }
    };
    const timer = setTimeout(finish, waitMs);
    dispose = client.subscribe(query, {
      next(result) {
        session.updates.push({ receivedMs: Date.now(), result });
        if (enough(session.updates)) finish();
      },
      error(error) {
        session.errors.push(describe(error));
        finish();
      },
      complete() {
        session.completed = true;
        finish();
      },
    });
  });
}

const changed = (updates) =>
  updates.length >= 2 &&
  updates.slice(1).some((u) => {
    const data = u.result.data?.callsUpdated;
    return data && (data.changed.length > 0 || data.removed.length > 0);
  });

const first = await watch(changed);
// Let the client notice the end (graphql-ws closes its lazy socket; the SSE stream ends).
await sleep(300);
const eventsAfterFirst = [...client.events];
const second = await watch((updates) => updates.length >= 1);
await sleep(300);
await client.dispose();
console.log(JSON.stringify({ kind, first, second, eventsAfterFirst, events: client.events }));
