// Build step of the e2e workspace: writes a text file derived from the sources and a binary file
// of random (incompressible) bytes, so a cache hit can be checked byte for byte.
const fs = require("fs");
const path = require("path");
const crypto = require("crypto");

const [projectRoot, binaryBytes] = process.argv.slice(2);
const dist = path.join(projectRoot, "dist");
fs.mkdirSync(path.join(dist, "nested"), { recursive: true });
const source = fs.readFileSync(path.join(projectRoot, "src", "input.txt"), "utf8");
fs.writeFileSync(path.join(dist, "out.txt"), `built ${projectRoot} at ${Date.now()}\n${source}`);
fs.writeFileSync(path.join(dist, "nested", "data.bin"), crypto.randomBytes(Number(binaryBytes)));
console.log(`built ${projectRoot}`);
