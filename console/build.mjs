// Bundles the console into the Python package (connectors/http/console), which the outlet's
// HTTP API serves at /: one script, one stylesheet, one page.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

const out = new URL("../connectors/http/console/", import.meta.url).pathname;
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  minify: true,
  sourcemap: false,
  target: "es2020",
  outfile: `${out}app.js`,
  legalComments: "linked",
});
copyFileSync("src/index.html", `${out}index.html`);
copyFileSync("src/style.css", `${out}app.css`);
console.log(`console built into ${out}`);
