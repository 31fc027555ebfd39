// Runs graphql-http's auditServer against a live GraphQL endpoint and prints the
// results as one JSON array on stdout: [{id, name, status, reason}], status being
// "ok", "warn"/"notice" (a SHOULD or MAY not met) or "error" (a MUST not met).
// AUDIT_URL is the endpoint; with AUDIT_PREFLIGHT=1 every request carries
// `Apollo-Require-Preflight`, as a browser client of a CSRF-protected server sends it.
import { auditServer } from 'graphql-http';

const url = process.env.AUDIT_URL;
if (!url) {
  console.error('usage: AUDIT_URL=<graphql endpoint url> [AUDIT_PREFLIGHT=1] node audit.mjs');
  process.exit(2);
}
const fetchFn =
  process.env.AUDIT_PREFLIGHT === '1'
    ? (input, init = {}) => {
        const headers = new Headers(init.headers);
        headers.set('apollo-require-preflight', 'true');
        return fetch(input, { ...init, headers });
      }
    : fetch;
const results = await auditServer({ url, fetchFn });
const out = [];
for (const result of results) {
  out.push({
    id: result.id,
    name: result.name,
    status: result.status,
    reason: result.status === 'ok' ? null : result.reason,
  });
}
process.stdout.write(JSON.stringify(out) + '\n');
