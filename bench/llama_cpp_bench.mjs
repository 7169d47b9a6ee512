// llama.cpp's side of bench/run_llama_cpp.sh, through node-llama-cpp's prebuilt CPU binaries.
//   node llama_cpp_bench.mjs MODEL.gguf PROMPT_IDS TOKENS [ADAPTER.gguf ...]
// PROMPT_IDS: comma-separated token ids (the same ids deltaserve's benchmark uses). Prints
//   greedy_token_ids A,B,...                    (the first 16 generated, to check the export)
//   single_stream_tokens_per_second X          (decode: first to last generated token)
//   mixed_adapters_tokens_per_second X          (one stream per adapter at once, each in its own
//                                               context since llama.cpp batches one adapter set per
//                                               context; all tokens / wall time)
// Greedy decoding; generation runs to TOKENS tokens whatever they are.
import {getLlama} from "node-llama-cpp";

const [modelPath, promptText, tokensText, ...adapterPaths] = process.argv.slice(2);
const prompt = promptText.split(",").map(Number);
const tokens = Number(tokensText);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
const contextSize = prompt.length + tokens + 8;
// Threads are set explicitly: left to node-llama-cpp's default, one stream on this 2-core machine
// decoded at 1.3 s per token instead of 6 ms.
const cores = llama.cpuMathCores;

// Generates `tokens` tokens in one context; returns [first token time, last token time, ids].
async function stream(context) {
  const sequence = context.getSequence();
  let count = 0, first = 0, last = 0;
  const ids = [];
  for await (const token of sequence.evaluate(prompt, {temperature: 0})) {
    last = performance.now();
    if (count === 0) first = last;
    if (ids.length < 16) ids.push(token);
    if (++count >= tokens) break;
  }
  return [first, last, ids];
}

for (const round of ["warm-up", "measured"]) {
  const context = await model.createContext({contextSize, threads: cores});
  const [first, last, ids] = await stream(context);
  await context.dispose();
  if (round === "measured") {
    console.log(`greedy_token_ids ${ids.join(",")}`);
    console.log(`single_stream_tokens_per_second ${((tokens - 1) / ((last - first) / 1000)).toFixed(1)}`);
  }
}

// The streams run at once, each context with one thread or with all of them; the faster counts.
if (adapterPaths.length > 0) {
  let best = 0;
  for (const threads of [1, cores]) {
    const contexts = await Promise.all(adapterPaths.map((filePath) =>
      model.createContext({contextSize, threads, lora: {adapters: [{filePath}]}})));
    const started = performance.now();
    await Promise.all(contexts.map(stream));
    const seconds = (performance.now() - started) / 1000;
    best = Math.max(best, adapterPaths.length * tokens / seconds);
    await Promise.all(contexts.map((context) => context.dispose()));
  }
  console.log(`mixed_adapters_tokens_per_second ${best.toFixed(1)}`);
}
await model.dispose();
await llama.dispose();
