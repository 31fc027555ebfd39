// The second subgraph of the federation tests ("notes", @apollo/subgraph): each note
// references a `Call` by id only, so the router must fetch the call from catapult-gateway.
// Every request it receives is recorded (its Authorization and X-Catapult-User-Id).
import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";
import { buildSubgraphSchema } from "@apollo/subgraph";
import { parse } from "graphql";

export const notesTypeDefs = parse(`
  extend schema @link(url: "https://specs.apollo.dev/federation/v2.5", import: ["@key"])

  type Query {
    notes: [Note!]!
  }

  type Note {
    text: String!
    call: Call
  }

  type Call @key(fields: "id", resolvable: false) {
    id: ID!
  }
`);

export async function startNotes(callIds) {
  const headers = [];
  const server = new ApolloServer({
    schema: buildSubgraphSchema({
      typeDefs: notesTypeDefs,
      resolvers: {
        Query: {
          notes: () => callIds.map((id, n) => ({ text: `note ${n + 1}`, call: { id } })),
        },
      },
    }),
  });
  const { url } = await startStandaloneServer(server, {
    listen: { host: "127.0.0.1", port: 0 },
    context: async ({ req }) => {
      headers.push({
        authorization: req.headers.authorization ?? null,
        userId: req.headers["x-catapult-user-id"] ?? null,
      });
      return {};
    },
  });
  return { url, headers, stop: () => server.stop() };
}

// The query both routers answer: it crosses both subgraphs.
export const NOTES_WITH_CALLS = `
  query NotesWithCalls {
    notes {
      text
      call { id state from to startTime }
    }
  }
`;

// The header propagation a router needs in front of catapult-gateway.
export const PROPAGATED = ["authorization", "x-catapult-user-id"];

export const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
