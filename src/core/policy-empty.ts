// emptyPolicy() lives with the policy types (policy/types.ts), which load neither YAML nor the schema; this path
// stays for the modules that import it from here.
export { emptyPolicy } from "./policy/types.js";
