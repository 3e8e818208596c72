// The official OpenAI Node client against `tessera serve` (tests/test_serve.cpp).
//   node openai_client.mjs MODULE_DIR PORT
// Prints one JSON object with what each call returned.
import path from "node:path";
import { pathToFileURL } from "node:url";

const [moduleDir, port] = process.argv.slice(2);
const { default: OpenAI } = await import(pathToFileURL(path.join(moduleDir, "node_modules", "openai", "index.mjs")).href);
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "sk-unused", maxRetries: 0 });
const out = {};
const models = await client.models.list();
out.model = models.data[0].id;
const c = await client.completions.create({ model: out.model, prompt: "Once upon a time", max_tokens: 16, temperature: 0 });
out.completion = c.choices[0].text;
out.completion_usage = c.usage;
const chat = await client.chat.completions.create({
  model: out.model, messages: [{ role: "user", content: "Hello there" }], max_tokens: 16, temperature: 0,
});
out.chat = chat.choices[0].message.content;
out.chat_finish = chat.choices[0].finish_reason;
const stream = await client.chat.completions.create({
  model: out.model, messages: [{ role: "user", content: "Hello there" }], max_tokens: 16, temperature: 0,
  stream: true, stream_options: { include_usage: true },
});
out.chat_stream = "";
for await (const chunk of stream) {
  if (chunk.choices.length && chunk.choices[0].delta.content) out.chat_stream += chunk.choices[0].delta.content;
  if (chunk.usage) out.stream_usage = chunk.usage;
}
try {
  await client.chat.completions.create({ model: out.model, messages: [], max_tokens: 4 });
  out.bad_request = "accepted";
} catch (e) {
  out.bad_request = { status: e.status, message: e.error && e.error.message };
}
console.log(JSON.stringify(out));
