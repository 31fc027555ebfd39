// The same federated graph as federation.mjs, with The Guild's tools instead of Apollo's:
//
// 1. The notes subgraph (notes.mjs) references `Call` by id only.
// 2. @theguild/federation-composition composes it with catapult-gateway's SDL.
// 3. Hive Gateway (@graphql-hive/gateway-runtime, served by node:http) runs the
//    supergraph, propagating `Authorization` and `X-Catapult-User-Id` from the client's
//    request to every subgraph request (its `propagateHeaders` option).
// 4. The query crossing both subgraphs is sent with the caller's headers; the answer and
//    the supergraph are printed as JSON for tests/test_federation.py to check.
//
// Input (environment): CALLS_URL, CALLS_SDL_FILE, CALL_IDS, AUTHORIZATION, USER_ID.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createGatewayRuntime } from "@graphql-hive/gateway-runtime";
import { composeServices } from "@theguild/federation-composition";
import { parse } from "graphql";
import { NOTES_WITH_CALLS, PROPAGATED, env, notesTypeDefs, startNotes } from "./notes.mjs";

const notes = await startNotes(env("CALL_IDS").split(","));

const composition = composeServices([
  { name: "calls", url: env("CALLS_URL"), typeDefs: parse(readFileSync(env("CALLS_SDL_FILE"), "utf8")) },
  { name: "notes", url: notes.url, typeDefs: notesTypeDefs },
]);
if (composition.errors) {
  console.log(JSON.stringify({ compositionErrors: composition.errors.map((e) => e.message) }));
  process.exit(1);
}

const gateway = createGatewayRuntime({
  supergraph: composition.supergraphSdl,
  logging: false,
  propagateHeaders: {
    fromClientToSubgraphs: ({ request }) =>
      Object.fromEntries(PROPAGATED.map((name) => [name, request.headers.get(name)])),
  },
});
const server = createServer(gateway);
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const routerUrl = `http://127.0.0.1:${server.address().port}/graphql`;

const response = await fetch(routerUrl, {
  method: "POST",
  headers: {
    "content-type": "application/json",
    accept: "application/graphql-response+json, application/json",
    authorization: env("AUTHORIZATION"),
    "x-catapult-user-id": env("USER_ID"),
  },
  body: JSON.stringify({ query: NOTES_WITH_CALLS }),
});
const result = await response.json();

console.log(
  JSON.stringify({
    status: response.status,
    result,
    notesHeaders: notes.headers,
    supergraphSdl: composition.supergraphSdl,
  }),
);
await gateway.dispose();
server.close();
server.closeAllConnections();
await notes.stop();
