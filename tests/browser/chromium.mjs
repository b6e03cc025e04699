// Debian's chromium, headless, as this machine's probe starts it: no
// sandbox (the tests run as root), and none of the background connections
// a closed network refuses. `CHROMIUM` names another binary.
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || execFileSync("sh", ["-c", "command -v chromium"]).toString().trim(),
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}
