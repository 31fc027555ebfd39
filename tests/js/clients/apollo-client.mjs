// Apollo Client against a live catapult-gateway, configured as a frontend would be:
// - `relayStylePagination` on `Query.callsConnection`, paging with `fetchMore` until
//   `pageInfo.hasNextPage` is false;
// - automatic persisted queries, with hash-only queries sent over GET.
//
// Input (environment): GATEWAY_URL (…/graphql), AUTHORIZATION, USER_ID, FROM (a caller
// number, to keep the walk short), FIRST. Prints one JSON line: the ids, in cache order,
// and every HTTP exchange the client made.
import { createHash } from "node:crypto";
import { ApolloClient, HttpLink, InMemoryCache, gql } from "@apollo/client/core/index.js";
import { createPersistedQueryLink } from "@apollo/client/link/persisted-queries/index.js";
import { relayStylePagination } from "@apollo/client/utilities/index.js";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const exchanges = [];
async function recordingFetch(url, options) {
  const response = await fetch(url, options);
  const body = await response.clone().json();
  exchanges.push({
    method: options.method ?? "GET",
    hasQuery: options.method === "POST" ? "query" in JSON.parse(options.body) : new URL(url).searchParams.has("query"),
    status: response.status,
    cacheControl: response.headers.get("cache-control"),
    codes: (body.errors ?? []).map((e) => e.extensions?.code),
  });
  return response;
}

const client = new ApolloClient({
  link: createPersistedQueryLink({
    sha256: (text) => createHash("sha256").update(text).digest("hex"),
    useGETForHashedQueries: true,
  }).concat(
    new HttpLink({
      uri: env("GATEWAY_URL"),
      fetch: recordingFetch,
      headers: { authorization: env("AUTHORIZATION"), "x-catapult-user-id": env("USER_ID") },
    }),
  ),
  cache: new InMemoryCache({
    typePolicies: {
      Query: { fields: { callsConnection: relayStylePagination(["filter", "sortOrder"]) } },
    },
  }),
});

const CALLS = gql`
  query CallsFrom($from: String!, $first: Int!, $after: String) {
    callsConnection(filter: { from: $from }, first: $first, after: $after) {
      edges {
        cursor
        node { id from state }
      }
      pageInfo { hasNextPage endCursor }
    }
  }
`;

const variables = { from: env("FROM"), first: Number(env("FIRST")) };
const watched = client.watchQuery({ query: CALLS, variables });
let { data } = await watched.result();
let pages = 1;
while (data.callsConnection.pageInfo.hasNextPage) {
  await watched.fetchMore({ variables: { after: data.callsConnection.pageInfo.endCursor } });
  data = watched.getCurrentResult().data;
  pages += 1;
  if (pages > 100) throw new Error("the walk does not end");
}

console.log(
  JSON.stringify({
    ids: data.callsConnection.edges.map((edge) => edge.node.id),
    froms: [...new Set(data.callsConnection.edges.map((edge) => edge.node.from))],
    pages,
    exchanges,
  }),
);
client.stop();
