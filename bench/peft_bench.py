"""Hugging Face transformers + PEFT against deltaserve's engine on one GPU, same model shape.

  python3 bench/peft_bench.py --out DIR --engine-bench build-gpu/bench/deltaserve-bench-engine

Writes into DIR a Llama-2-7B-shaped model with random bf16 weights (hidden 4096, 32 layers,
32 heads, intermediate 11008; vocabulary 4000, the demo tokenizer's, so that deltaserve's
benchmark can build prompts) and 128 rank-16 LoRA adapters on all seven projections (random A
and B, so every adapter changes the output). Then, in one run:
  - PEFT: --requests prompts of --prompt-tokens tokens, request i on adapter i % 32, generated
    together through PEFT's mixed-adapter batch (generate(adapter_names=...)), greedy, for
    --new-tokens tokens: tokens/s;
  - deltaserve: the engine benchmark on the same model and adapters (bfloat16 on cuda), whose
    mixed-adapter line gives tokens/s at K = 32 and 128 and base-only;
and prints deltaserve / PEFT at K = 32 and deltaserve with 128 adapters / base-only.
Runs only where torch, transformers and peft are installed (the GPU machines' image).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import time

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_model(out, demo_tokenizer_dir, adapters):
    base_dir = os.path.join(out, "base")
    if os.path.exists(os.path.join(base_dir, "config.json")):
        return base_dir
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=4000,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(base_dir, safe_serialization=True)
    for name in os.listdir(demo_tokenizer_dir):
        if name.startswith("tokenizer"):
            shutil.copy(os.path.join(demo_tokenizer_dir, name), base_dir)
    adapters_dir = os.path.join(base_dir, "adapters")
    for i in range(adapters):
        torch.manual_seed(1000 + i)
        peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn_like(parameter) * 0.01)
        peft_model.save_pretrained(os.path.join(adapters_dir, f"demo-{i:03d}"))
        model = peft_model.unload()
    return base_dir


def peft_tokens_per_second(base_dir, adapters, requests, prompt_tokens, new_tokens):
    model = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.bfloat16).cuda()
    adapters_dir = os.path.join(base_dir, "adapters")
    peft_model = PeftModel.from_pretrained(model, os.path.join(adapters_dir, "demo-000"), adapter_name="demo-000")
    for i in range(1, adapters):
        peft_model.load_adapter(os.path.join(adapters_dir, f"demo-{i:03d}"), adapter_name=f"demo-{i:03d}")
    peft_model.eval()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 4000, (requests, prompt_tokens), generator=generator).cuda()
    names = [f"demo-{i % adapters:03d}" for i in range(requests)]
    with torch.no_grad():
        peft_model.generate(input_ids=input_ids[:2], adapter_names=names[:2], max_new_tokens=4, do_sample=False)
        torch.cuda.synchronize()
        started = time.perf_counter()
        output = peft_model.generate(input_ids=input_ids, adapter_names=names, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    generated = (output.shape[1] - prompt_tokens) * requests
    del peft_model, model
    torch.cuda.empty_cache()
    return generated / seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--engine-bench", required=True)
    parser.add_argument("--demo-tokenizer", default="build-gpu/bench-medium")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    base_dir = write_model(args.out, args.demo_tokenizer, 128)
    peft = peft_tokens_per_second(base_dir, 32, args.requests, args.prompt_tokens, args.new_tokens)
    print(f"PEFT mixed-adapter batch, 32 adapters, {args.requests} requests: {peft:.1f} tokens/s")
    result = subprocess.run(
        [args.engine_bench, "--model-dir", base_dir, "--device", "cuda", "--dtype", "bfloat16",
         "--decode-tokens", "64", "--decode-rounds", "3", "--concurrency", "1,64",
         "--adapters-dir", os.path.join(base_dir, "adapters"), "--adapter-counts", "32,128",
         "--adapter-requests", str(args.requests), "--adapter-tokens", str(args.new_tokens),
         "--device-cache-adapters", "128", "--host-cache-adapters", "128"],
        check=True, capture_output=True, text=True).stdout
    print(result)
    rows = {int(m.group(1)): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+", result, re.M)}
    ours_32 = rows[32][1]
    base_128, mixed_128 = rows[128]
    print(json.dumps({"deltaserve_over_peft_32_adapters": round(ours_32 / peft, 2),
                      "deltaserve_128_adapters_over_base": round(mixed_128 / base_128, 2)}))


if __name__ == "__main__":
    main()
