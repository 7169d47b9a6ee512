// cpu_kernels::AttendRuns against attention written here as plain double-precision loops
// (scores, softmax, weighted values) over keys and values read through shuffled block tables:
// prompt runs from position 0 and from the middle of a sequence, decode rows, several runs in one
// call, grouped-query heads with groups that do and do not divide a 16-lane tile (1, 2, 4, 7,
// 32), head dimensions that are and are not multiples of the vector width, blocks of 16 and of 5
// positions, query rows strided inside a wider tensor; both the prompt tiles and row by row.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "server/model/cpu_attention.h"
#include "server/model/worker_team.h"

namespace deltaserve::model::cpu_kernels {
namespace {

struct Shape {
  int64_t heads, kv_heads, head_dim, block_tokens;
};

// softmax(q . k_t / sqrt(d)) . v_t over t < context, for one query row and head, in double.
std::vector<double> ReferenceRow(const at::Tensor& query, const at::Tensor& kv, const std::vector<int32_t>& blocks,
                                 int64_t row, int64_t head, int64_t group, int64_t context) {
  const int64_t head_dim = query.size(2), block_tokens = kv.size(3);
  auto q = query.accessor<float, 3>();
  auto cache = kv.accessor<float, 5>();
  std::vector<double> scores(static_cast<size_t>(context));
  for (int64_t t = 0; t < context; ++t) {
    double dot = 0;
    for (int64_t i = 0; i < head_dim; ++i) {
      dot += static_cast<double>(q[row][head][i]) * cache[0][blocks[t / block_tokens]][head / group][t % block_tokens][i];
    }
    scores[static_cast<size_t>(t)] = dot / std::sqrt(static_cast<double>(head_dim));
  }
  const double highest = *std::max_element(scores.begin(), scores.end());
  double total = 0;
  for (double& s : scores) total += (s = std::exp(s - highest));
  std::vector<double> out(static_cast<size_t>(head_dim), 0.0);
  for (int64_t t = 0; t < context; ++t) {
    for (int64_t i = 0; i < head_dim; ++i) {
      out[static_cast<size_t>(i)] += scores[static_cast<size_t>(t)] / total *
                                     cache[1][blocks[t / block_tokens]][head / group][t % block_tokens][i];
    }
  }
  return out;
}

void ExpectRunsMatchReference(const Shape& shape) {
  c10::InferenceMode inference;
  const int64_t group = shape.heads / shape.kv_heads;
  // Two sequences: a prompt chunk from position 0 (37 rows), one continuing at position 49 (45
  // rows), and single decode rows of both.
  const int64_t longest = 120;
  const int64_t per_sequence = (longest + shape.block_tokens - 1) / shape.block_tokens;
  const int64_t blocks = 2 * per_sequence + 3;
  std::vector<int32_t> order(static_cast<size_t>(blocks));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(static_cast<uint32_t>(shape.heads * 31 + shape.head_dim)));
  const std::vector<int32_t> first(order.begin(), order.begin() + per_sequence);
  const std::vector<int32_t> second(order.begin() + per_sequence, order.begin() + 2 * per_sequence);
  at::manual_seed(shape.heads * 100 + shape.head_dim + shape.block_tokens);
  const at::Tensor kv = at::randn({2, blocks, shape.kv_heads, shape.block_tokens, shape.head_dim}) * 2;
  const int64_t tokens = 37 + 45 + 2 + 3;
  // Queries inside a wider tensor, as the model's slice of its fused projection output.
  const at::Tensor wide = at::randn({tokens, shape.heads * shape.head_dim + 9}) * 2;
  const at::Tensor query = wide.narrow(1, 3, shape.heads * shape.head_dim).view({tokens, shape.heads, shape.head_dim});
  const std::vector<QueryRun> runs = {{0, 37, &first, 1},
                                      {37, 45, &second, 50},
                                      {82, 1, &first, 100},
                                      {83, 1, &second, 120},
                                      // rows 84..86 are not listed and stay untouched
                                      };
  for (AttentionMethod method : {AttentionMethod::kByRun, AttentionMethod::kRowByRow}) {
    at::Tensor output = at::full({tokens, shape.heads * shape.head_dim}, 5.0f);
    AttendRuns(method, query, kv, runs, output);
    auto o = output.accessor<float, 2>();
    double worst = 0;
    for (const QueryRun& run : runs) {
      for (int64_t i = 0; i < run.rows; ++i) {
        for (int64_t h = 0; h < shape.heads; ++h) {
          const std::vector<double> expected =
              ReferenceRow(query, kv, *run.blocks, run.first_row + i, h, group, run.first_context + i);
          for (int64_t d = 0; d < shape.head_dim; ++d) {
            worst = std::max(worst, std::abs(o[run.first_row + i][h * shape.head_dim + d] - expected[static_cast<size_t>(d)]));
          }
        }
      }
    }
    const char* name = method == AttentionMethod::kByRun ? "by run" : "row by row";
    EXPECT_LT(worst, 2e-5) << name << " heads " << shape.heads << " kv heads " << shape.kv_heads << " head_dim "
                           << shape.head_dim << " block " << shape.block_tokens;
    EXPECT_TRUE(at::equal(output.narrow(0, 84, 3), at::full({3, shape.heads * shape.head_dim}, 5.0f))) << name;
  }
}

TEST(CpuAttentionTest, MatchesADoublePrecisionAttentionForEveryGroupingAndLayout) {
  SetWorkerTeamOfThisThread(2);
  for (const Shape& shape : {Shape{8, 4, 64, 16}, Shape{4, 4, 20, 5}, Shape{8, 2, 32, 16}, Shape{7, 1, 24, 5},
                             Shape{32, 1, 16, 16}, Shape{2, 1, 128, 16}}) {
    ExpectRunsMatchReference(shape);
  }
  SetWorkerTeamOfThisThread(0);
}

TEST(CpuAttentionTest, LargeScoresStayFinite) {
  // Queries and keys that make scores of several hundred: the online softmax subtracts the running
  // maximum before exponentiating, so the result is a convex combination of the values.
  c10::InferenceMode inference;
  const std::vector<int32_t> blocks = {1, 0, 3, 2};
  at::manual_seed(3);
  const at::Tensor kv = at::randn({2, 4, 1, 16, 32}) * 30;
  const at::Tensor query = at::randn({64, 2, 32}) * 30;
  at::Tensor output = at::empty({64, 64});
  AttendRuns(query, kv, {{0, 64, &blocks, 1}}, output);
  EXPECT_TRUE(output.isfinite().all().item<bool>());
  EXPECT_LE(output.abs().max().item<float>(), kv[1].abs().max().item<float>() + 1e-3);
  const std::vector<double> last = ReferenceRow(query, kv, blocks, 63, 1, 2, 64);
  for (int64_t d = 0; d < 32; ++d) EXPECT_NEAR(output[63][32 + d].item<double>(), last[static_cast<size_t>(d)], 1e-3);
}

TEST(CpuAttentionTest, RefusesRunsOutsideTheirTableOrTheArena) {
  c10::InferenceMode inference;
  const at::Tensor kv = at::randn({2, 4, 1, 16, 32});
  const at::Tensor query = at::randn({8, 2, 32});
  at::Tensor output = at::empty({8, 64});
  const std::vector<int32_t> one = {0};
  const std::vector<int32_t> outside = {0, 9};
  EXPECT_THROW(AttendRuns(query, kv, {{0, 8, &one, 10}}, output), c10::Error);      // table too short
  EXPECT_THROW(AttendRuns(query, kv, {{0, 8, &outside, 10}}, output), c10::Error);  // block 9 of 4
  EXPECT_THROW(AttendRuns(query, kv, {{4, 8, &one, 1}}, output), c10::Error);       // rows past the query
}

}  // namespace
}  // namespace deltaserve::model::cpu_kernels
