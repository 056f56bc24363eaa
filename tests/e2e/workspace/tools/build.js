// Build step of the e2e workspace: writes a text file derived from the sources and a binary file
// of random (incompressible) bytes, so a cache hit can be checked byte for byte.
const fs = require("fs");
const path = require("path");
const crypto = require("crypto");

const [projectRoot, binaryBytes] = process.argv.slice(2);
// Some tests need builds that take a while (a token expiring, a secret rotated while nx runs).
const delay = Number(process.env.E2E_BUILD_DELAY_MS || 0);
if (delay > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, delay);
const dist = path.join(projectRoot, "dist");
fs.mkdirSync(path.join(dist, "nested"), { recursive: true });
const source = fs.readFileSync(path.join(projectRoot, "src", "input.txt"), "utf8");
fs.writeFileSync(path.join(dist, "out.txt"), `built ${projectRoot} at ${Date.now()}\n${source}`);
fs.writeFileSync(path.join(dist, "nested", "data.bin"), crypto.randomBytes(Number(binaryBytes)));
console.log(`built ${projectRoot}`);
