// Runs graphql-http's auditServer against a live GraphQL endpoint and prints the
// results as one JSON array on stdout: [{id, name, status, reason}], status being
// "ok", "warn" (a SHOULD or MAY not met) or "error" (a MUST not met).
import { auditServer } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs <graphql endpoint url>');
  process.exit(2);
}
const results = await auditServer({ url });
const out = [];
for (const result of results) {
  out.push({
    id: result.id,
    name: result.name,
    status: result.status,
    reason: result.status === 'ok' ? null : result.reason,
  });
}
process.stdout.write(JSON.stringify(out));
