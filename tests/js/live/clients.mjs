// One subscription API over the three reference clients, each used as its docs show:
// graphql-ws (the graphql-transport-ws WebSocket protocol; credentials in connection_init,
// as a browser must send them), graphql-sse (distinct connections mode; credentials as
// headers) and Apollo Client's GraphQLWsLink over a graphql-ws client.
import { ApolloClient, InMemoryCache, gql } from "@apollo/client/core/index.js";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions/index.js";
import { createClient as createSseClient } from "graphql-sse";
import { createClient as createWsClient } from "graphql-ws";
import WebSocket from "ws";

export const CALL_FIELDS = "id state startTime activeTime endTime chargeableDuration";

export function subscriptionDocument(size) {
  return `subscription Watch {
    callsUpdated(size: ${Number(size)}) { at changed removed calls { ${CALL_FIELDS} } }
  }`;
}

export function credentials(authorization, userId) {
  return { Authorization: authorization, "X-Catapult-User-Id": userId };
}

function wsUrl(httpUrl) {
  return httpUrl.replace(/^http/, "ws");
}

// A connection that subscriptions share: one WebSocket (graphql-ws, Apollo) or nothing
// shared at all (graphql-sse in distinct connections mode: one stream per subscription).
// `events` records what the client library reports about its connection.
export function connect(kind, url, headers, options = {}) {
  const events = [];
  if (kind === "sse") {
    const client = createSseClient({
      url,
      headers,
      retryAttempts: 0,
      ...options,
    });
    return {
      events,
      subscribe(query, sink) {
        return client.subscribe({ query }, sink);
      },
      dispose() {
        client.dispose();
      },
    };
  }
  const ws = createWsClient({
    url: wsUrl(url),
    webSocketImpl: WebSocket,
    connectionParams: headers,
    retryAttempts: 0,
    // Close the socket as soon as the last subscription ends, so that a new subscription
    // after it has to connect again (the reconnect the tests watch).
    lazy: true,
    lazyCloseTimeout: 0,
    on: {
      connected: () => events.push("connected"),
      closed: (event) => events.push(`closed:${event?.code ?? "?"}`),
    },
    ...options,
  });
  if (kind === "ws") {
    return {
      events,
      subscribe(query, sink) {
        return ws.subscribe({ query }, sink);
      },
      dispose() {
        return ws.dispose();
      },
    };
  }
  if (kind !== "apollo") {
    throw new Error(`unknown client kind ${kind}`);
  }
  const apollo = new ApolloClient({ link: new GraphQLWsLink(ws), cache: new InMemoryCache() });
  return {
    events,
    subscribe(query, sink) {
      const subscription = apollo.subscribe({ query: gql(query) }).subscribe({
        next: (result) => sink.next(result),
        error: (error) => sink.error(error),
        complete: () => sink.complete(),
      });
      return () => subscription.unsubscribe();
    },
    dispose() {
      apollo.stop();
      return ws.dispose();
    },
  };
}

// What an error looks like in the JSON a script prints: a close event, an Error, a list.
export function describe(error) {
  if (error === undefined || error === null) return null;
  if (Array.isArray(error)) return error.map((e) => e?.message ?? String(e));
  if (typeof error.code === "number" && "reason" in error) {
    return `close ${error.code} ${error.reason}`;
  }
  return error.message ?? String(error);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
