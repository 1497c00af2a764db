// Runs the page's validator (intake/static/src/rules.js and validate.js) in node over the
// bodies on standard input ({"today": "YYYY-MM-DD", "bodies": [...]}) and prints its verdicts
// as JSON, for tests/intake/test_page.py to compare with the API's.
"use strict";
const fs = require("fs");
const path = require("path");
const vm = require("vm");

const source = path.join(process.argv[2]);
const context = vm.createContext({});
for (const name of ["rules.js", "validate.js"]) {
  vm.runInContext(fs.readFileSync(path.join(source, name), "utf8"), context, { filename: name });
}
const input = JSON.parse(fs.readFileSync(0, "utf8"));
context.input = input;
const verdicts = vm.runInContext(
  "input.bodies.map(function (body) { return validateRegistration(body, input.today); })",
  context,
);
process.stdout.write(JSON.stringify(verdicts));
