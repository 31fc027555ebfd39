// Client tooling over a schema file, as frontend teams run it:
// - graphql-inspector `validate` of example operations (operations/*.graphql) and
//   `diff` of the schema against itself;
// - GraphQL Code Generator (typescript + typescript-operations) with `strictScalars: true`
//   and a mapping for each custom scalar.
//
// Input (environment): SCHEMA_FILE. Prints one JSON line: each tool's outcome.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { generate } from "@graphql-codegen/cli";

const schema = process.env.SCHEMA_FILE;
if (!schema) throw new Error("SCHEMA_FILE is not set");
const run = promisify(execFile);

async function inspector(...args) {
  try {
    const { stdout, stderr } = await run("node", ["node_modules/.bin/graphql-inspector", ...args]);
    return { ok: true, output: stdout + stderr };
  } catch (error) {
    return { ok: false, output: `${error.stdout ?? ""}${error.stderr ?? ""}` };
  }
}

async function codegen() {
  try {
    const [file] = await generate(
      {
        schema,
        documents: "operations/*.graphql",
        silent: true,
        generates: {
          "types.ts": {
            plugins: ["typescript", "typescript-operations"],
            config: { strictScalars: true, scalars: { DateTime: "string" } },
          },
        },
      },
      false,
    );
    return { ok: true, content: file.content };
  } catch (error) {
    return { ok: false, error: String(error?.message ?? error) };
  }
}

const [validate, invalid, diff, generated] = await Promise.all([
  inspector("validate", "operations/*.graphql", schema),
  inspector("validate", "invalid/*.graphql", schema),
  inspector("diff", schema, schema),
  codegen(),
]);
console.log(JSON.stringify({ validate, invalid, diff, codegen: generated }));
