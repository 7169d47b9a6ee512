// llama.cpp's side of bench/run_prefill_vs_llama_cpp.sh, through node-llama-cpp's prebuilt CPU
// binaries.   node llama_cpp_prefill.mjs MODEL.gguf VOCAB LENGTHS
// For each prompt length N in LENGTHS (comma-separated), a prompt of the ids 3 + (i * 7919) %
// (VOCAB - 3) (the ones deltaserve-bench-prefill-stall uses) is evaluated in a fresh context with
// all cores, until its first generated token; prints "prefill N SECONDS" (the better of two runs).
import {getLlama} from "node-llama-cpp";

const [modelPath, vocabText, lengthsText] = process.argv.slice(2);
const vocab = Number(vocabText);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
for (const length of lengthsText.split(",").map(Number)) {
  const prompt = Array.from({length}, (_, i) => 3 + (i * 7919) % (vocab - 3));
  let best = Infinity;
  for (let round = 0; round < 2; ++round) {
    const context = await model.createContext({contextSize: length + 8, batchSize: Math.min(length, 2048),
                                               threads: llama.cpuMathCores});
    const sequence = context.getSequence();
    const started = performance.now();
    for await (const token of sequence.evaluate(prompt, {temperature: 0})) break;
    best = Math.min(best, (performance.now() - started) / 1000);
    await context.dispose();
  }
  console.log(`prefill ${length} ${best.toFixed(3)}`);
}
await model.dispose();
