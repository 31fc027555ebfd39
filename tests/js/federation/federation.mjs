// A federated graph built with Apollo's own code, around a running catapult-gateway.
//
// 1. A second subgraph ("notes", @apollo/subgraph, notes.mjs) references `Call` by id only.
// 2. @apollo/composition composes it with catapult-gateway's SDL (export-schema).
// 3. A real @apollo/gateway runs the supergraph, propagating `Authorization` and
//    `X-Catapult-User-Id` from the client's request to every subgraph request.
// 4. A query that crosses both subgraphs is sent with the caller's headers; the answer
//    and the supergraph are printed as JSON for tests/test_federation.py to check.
//
// Input (environment): CALLS_URL (the gateway's /graphql), CALLS_SDL_FILE, CALL_IDS
// (comma-separated ids the notes refer to), AUTHORIZATION, USER_ID.
import { readFileSync } from "node:fs";
import { composeServices } from "@apollo/composition";
import { ApolloGateway, RemoteGraphQLDataSource } from "@apollo/gateway";
import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";
import { parse } from "graphql";
import { NOTES_WITH_CALLS, PROPAGATED, env, notesTypeDefs, startNotes } from "./notes.mjs";

const notes = await startNotes(env("CALL_IDS").split(","));
const notesUrl = notes.url;
const notesHeaders = notes.headers;

const composition = composeServices([
  { name: "calls", url: env("CALLS_URL"), typeDefs: parse(readFileSync(env("CALLS_SDL_FILE"), "utf8")) },
  { name: "notes", url: notesUrl, typeDefs: notesTypeDefs },
]);
if (composition.errors) {
  console.log(JSON.stringify({ compositionErrors: composition.errors.map((e) => e.message) }));
  process.exit(1);
}

class PropagatingDataSource extends RemoteGraphQLDataSource {
  willSendRequest({ request, context }) {
    for (const name of PROPAGATED) {
      const value = context.headers?.[name];
      if (value) request.http.headers.set(name, value);
    }
  }
}

const gateway = new ApolloGateway({
  supergraphSdl: composition.supergraphSdl,
  buildService: ({ url }) => new PropagatingDataSource({ url }),
});
const router = new ApolloServer({ gateway });
const { url: routerUrl } = await startStandaloneServer(router, {
  listen: { host: "127.0.0.1", port: 0 },
  context: async ({ req }) => ({ headers: req.headers }),
});

const query = NOTES_WITH_CALLS;
const response = await fetch(routerUrl, {
  method: "POST",
  headers: {
    "content-type": "application/json",
    authorization: env("AUTHORIZATION"),
    "x-catapult-user-id": env("USER_ID"),
  },
  body: JSON.stringify({ query }),
});
const result = await response.json();

console.log(
  JSON.stringify({
    status: response.status,
    result,
    notesHeaders,
    supergraphSdl: composition.supergraphSdl,
  }),
);
await router.stop();
await notes.stop();
