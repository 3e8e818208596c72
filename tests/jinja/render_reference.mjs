// Renders chat templates with the reference Jinja implementation
// (@huggingface/jinja) for tests/test_jinja.cpp.
//   node render_reference.mjs MODULE_DIR CASES.json OUT.json
// CASES.json: [{"template": PATH, "vars": {...}}, ...]; OUT.json gets one
// {"output": TEXT} or {"error": MESSAGE} per case, in order.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [moduleDir, casesPath, outPath] = process.argv.slice(2);
const entry = path.join(moduleDir, "node_modules", "@huggingface", "jinja", "dist", "index.js");
const { Template } = await import(pathToFileURL(entry).href);
const cases = JSON.parse(fs.readFileSync(casesPath, "utf8"));
const out = cases.map((c) => {
  try {
    const t = new Template(fs.readFileSync(c.template, "utf8"));
    return { output: t.render(c.vars) };
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) };
  }
});
fs.writeFileSync(outPath, JSON.stringify(out));
