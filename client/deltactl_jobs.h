// deltactl's "jobs" commands over the Jobs service:
//   deltactl jobs merge --method ties --density 0.5 --rank 16 --out team/merged a:0.6 b:0.4
//                 [--gamma G] [--lambda L] [--seed S] [--lines-alpha A --lines-beta B]
//                 [--idempotency-key K] [--wait]
//   deltactl jobs merge --recipe FILE [--out NAME] [--wait]
//                 FILE is a MergeRequest in JSON, e.g. {"method": "ties", "output": "team/m",
//                 "rank": 16, "density": 0.5, "inputs": [{"variant": "a", "weight": 0.6}, ...]}
//   deltactl jobs finetune --out NAME (--texts-file FILE | --dataset D) [--parent V]
//                 [--validation-file FILE | --validation-dataset D] [--rank R] [--alpha A]
//                 [--target-modules q_proj,v_proj] [--steps N | --epochs N] [--learning-rate LR]
//                 [--batch-size B] [--micro-batch-size M] [--warmup-steps N] [--seed S] [--wait]
//                 FILE holds one training text per line; D names an uploaded dataset
//   deltactl jobs unlearn --target-variant V (--out NAME | --replace-target [--keep-previous])
//                 (--forget-file FILE | --forget-dataset D) [--retain-file FILE | --retain-dataset D]
//                 [--holdout-file FILE | --holdout-dataset D]
//                 [--unlearn-method npo|simnpo|grad_diff|grad_ascent] [--steps N]
//                 [--learning-rate LR] [--rank R] [--beta B] [--micro-batch-size M] [--seed S] [--wait]
//   deltactl jobs get ID
//   deltactl jobs edit --out NAME (--prompt "The capital of {} is" --subject S --target " T"
//                 [--paraphrase P,...] [--neighborhood N,...] | --edits-file FILE.jsonl)
//                 [--method rome|memit|alphaedit] [--parent V] [--layers L,...] [--mom2-weight W]
//                 [--covariance-dataset D] [--param v_steps=50,...] [--seed S] [--wait]
//   deltactl jobs stats [--layers L,...] [--covariance-dataset D] [--wait]      (admins)
//   deltactl jobs list [--state RUNNING] [--kind merge|finetune|unlearn|edit|stats]   newest first, all pages
//   deltactl jobs watch ID       a progress line per update (bar, percentage, step, loss,
//                                tokens/s) until the job ends
//   deltactl jobs cancel ID
// merge --wait and watch exit 0 only when the job SUCCEEDED. Returns the process exit code
// (0 ok, 1 server error or failed job, 2 usage).
#pragma once

#include <string>
#include <vector>

#include "client/deltaserve_client.h"

namespace deltaserve::client {

int RunJobsCommand(DeltaserveClient& client, const std::vector<std::string>& arguments);

}  // namespace deltaserve::client
