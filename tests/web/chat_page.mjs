// Drives the server's chat page in headless Chromium over the DevTools
// protocol (node --experimental-websocket): loads http://127.0.0.1:PORT/, types a
// message into the page's input, clicks Send, waits until the streamed answer
// is complete, prints {"user", "answer", "stats"} as JSON and saves a screenshot.
//   node --experimental-websocket chat_page.mjs CHROMIUM PORT MESSAGE SCREENSHOT.png
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const [chromium, port, message, shot] = process.argv.slice(2);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "tessera-chromium-"));
const browser = spawn(chromium, ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
  "--remote-debugging-port=0", `--user-data-dir=${profile}`, "--window-size=1100,720", "about:blank"],
  { stdio: ["ignore", "ignore", "pipe"] });
const fail = (msg) => { console.error("chat_page: " + msg); cleanup(); process.exit(1); };
const cleanup = () => { try { browser.kill("SIGKILL"); } catch {} try { fs.rmSync(profile, { recursive: true, force: true }); } catch {} };
setTimeout(() => fail("timed out"), 60000).unref();

// The browser prints "DevTools listening on ws://..." on stderr.
const wsUrl = await new Promise((resolve) => {
  let buf = "";
  browser.stderr.on("data", (d) => {
    buf += d.toString();
    const m = buf.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) resolve(m[1]);
  });
  browser.on("exit", (code) => fail("chromium exited with " + code + ":\n" + buf));
});

const ws = new WebSocket(wsUrl);
await new Promise((r, j) => { ws.onopen = r; ws.onerror = () => j(new Error("websocket")); });
let nextId = 1;
const pending = new Map();
ws.onmessage = (ev) => {
  const msg = JSON.parse(ev.data);
  if (msg.id && pending.has(msg.id)) {
    const { resolve, reject } = pending.get(msg.id);
    pending.delete(msg.id);
    msg.error ? reject(new Error(JSON.stringify(msg.error))) : resolve(msg.result);
  }
};
const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
  const id = nextId++;
  pending.set(id, { resolve, reject });
  ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
});

const { targetId } = await send("Target.createTarget", { url: "about:blank" });
const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
const evaluate = async (expr) => {
  const r = await send("Runtime.evaluate", { expression: expr, awaitPromise: true, returnByValue: true }, sessionId);
  if (r.exceptionDetails) fail("page script failed: " + JSON.stringify(r.exceptionDetails));
  return r.result.value;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
await send("Page.enable", {}, sessionId);
await send("Page.navigate", { url: `http://127.0.0.1:${port}/` }, sessionId);
for (let i = 0; i < 100 && !(await evaluate("document.readyState === 'complete' && !!document.getElementById('send')")); ++i) await sleep(100);
// Greedy, short answer; then type and click as a user would.
await evaluate(`document.getElementById('temperature').value = '0';
  document.getElementById('max_tokens').value = '24';
  document.getElementById('input').value = ${JSON.stringify(message)};
  document.getElementById('send').click(); true`);
let done = false;
for (let i = 0; i < 300 && !done; ++i) {
  await sleep(100);
  done = await evaluate("!!document.querySelector('.assistant[data-done]')");
}
if (!done) fail("the answer did not complete");
const result = await evaluate(`({ user: document.querySelector('.msg.user').textContent,
  answer: document.querySelector('.assistant').textContent,
  errors: Array.from(document.querySelectorAll('.error')).map((e) => e.textContent),
  stats: document.getElementById('stats').textContent })`);
const png = await send("Page.captureScreenshot", { format: "png" }, sessionId);
fs.writeFileSync(shot, Buffer.from(png.data, "base64"));
console.log(JSON.stringify(result));
ws.close();
cleanup();
process.exit(0);
