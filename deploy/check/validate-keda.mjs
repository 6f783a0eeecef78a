// Validates KEDA resources (ScaledObject) against the schema bundled in
// @kubernetes-models/keda, offline. Usage: node validate-keda.mjs FILE...
import fs from "node:fs";
import yaml from "js-yaml";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1";

let failed = false;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (!doc || doc.kind !== "ScaledObject") continue;
    checked += 1;
    try {
      new ScaledObject(doc).validate();
      console.log(`${file}: ScaledObject/${doc.metadata.name} is valid`);
    } catch (e) {
      failed = true;
      console.error(`${file}: ScaledObject/${doc.metadata?.name}: ${e.message}`);
    }
  }
}
if (checked === 0) {
  console.error("no ScaledObject found");
  failed = true;
}
process.exit(failed ? 1 : 0);
