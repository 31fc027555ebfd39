// A real client walks the whole call history, configured with its defaults:
// - CLIENT=apollo: Apollo Client 3 with the DEFAULT errorPolicy ("none": any entry in
//   `errors` makes the query throw and the page is thrown away); a `callsConnection` walk
//   page by page to `hasNextPage: false`, then one `calls` page.
// - CLIENT=urql: @urql/core with its default exchanges; a result with `errors` carries
//   `result.error` (a CombinedError), which counts as a failure here.
//
// Input (environment): CLIENT, GATEWAY_URL (…/graphql), AUTHORIZATION, USER_ID, FIRST,
// CALLS_SIZE. Prints one JSON line: counts of calls and states, pages, and the first
// error met (null when none).
import { ApolloClient, HttpLink, InMemoryCache, gql } from "@apollo/client/core/index.js";
import { Client, cacheExchange, fetchExchange } from "@urql/core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const WALK = gql`
  query Walk($first: Int!, $after: String) {
    callsConnection(first: $first, after: $after) {
      edges {
        cursor
        node { id state direction startTime }
      }
      pageInfo { hasNextPage endCursor }
    }
  }
`;
const PAGE = gql`
  query Page($size: Int!) {
    calls(size: $size) { id state direction startTime }
  }
`;
const headers = { authorization: env("AUTHORIZATION"), "x-catapult-user-id": env("USER_ID") };

function apollo() {
  const client = new ApolloClient({
    link: new HttpLink({ uri: env("GATEWAY_URL"), headers }),
    cache: new InMemoryCache(),
  });
  return {
    // No errorPolicy anywhere: Apollo Client's default ("none") throws on any error.
    query: async (query, variables) => (await client.query({ query, variables })).data,
    stop: () => client.stop(),
  };
}

function urql() {
  const client = new Client({
    url: env("GATEWAY_URL"),
    exchanges: [cacheExchange, fetchExchange],
    fetchOptions: { headers },
  });
  return {
    query: async (query, variables) => {
      const result = await client.query(query, variables).toPromise();
      if (result.error) throw result.error;
      return result.data;
    },
    stop: () => {},
  };
}

function count(calls) {
  const states = {};
  for (const call of calls) states[call.state] = (states[call.state] ?? 0) + 1;
  return { calls: calls.length, distinct: new Set(calls.map((c) => c.id)).size, states };
}

const client = { apollo, urql }[env("CLIENT")]();
const walked = [];
let pages = 0;
let error = null;
let page = null;
try {
  let after = null;
  for (;;) {
    const data = await client.query(WALK, { first: Number(env("FIRST")), after });
    pages += 1;
    walked.push(...data.callsConnection.edges.map((edge) => edge.node));
    if (!data.callsConnection.pageInfo.hasNextPage) break;
    after = data.callsConnection.pageInfo.endCursor;
    if (pages > 1000) throw new Error("the walk does not end");
  }
  page = count((await client.query(PAGE, { size: Number(env("CALLS_SIZE")) })).calls);
} catch (thrown) {
  error = { name: thrown?.name ?? null, message: String(thrown?.message ?? thrown).slice(0, 500) };
}
client.stop();
const report = { client: env("CLIENT"), walk: { pages, ...count(walked) }, page, error };
console.error(`${report.client}: ${JSON.stringify(report)}`);
console.log(JSON.stringify(report));
