// Writes dist/out.bin: BUILD_BYTES random bytes (1 KiB by default), so a restored output is
// proved to come from the cache by being equal byte for byte to the first run's.
const fs = require("fs");
const crypto = require("crypto");
const bytes = Number(process.env.BUILD_BYTES || 1024);
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/out.bin", crypto.randomBytes(bytes));
console.log(`built ${bytes} bytes`);
