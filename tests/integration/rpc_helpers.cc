#include "tests/integration/rpc_helpers.h"

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "tests/support/test_models.h"

namespace deltaserve::testing {

v1::GenerateRequest Generate(const std::string& prompt, int max_tokens, const std::string& variant) {
  v1::GenerateRequest request;
  request.set_variant(variant);
  request.set_prompt(prompt);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

Stream RunStream(DeltaserveClient& client, const v1::GenerateRequest& request,
                 std::chrono::milliseconds timeout, const std::function<bool()>& cancel) {
  Stream stream;
  stream.status = client.Generate(
      request,
      [&stream](const v1::GenerateResponse& response) {
        stream.responses.push_back(response);
        stream.text += response.text();
        stream.tokens.insert(stream.tokens.end(), response.token_ids().begin(), response.token_ids().end());
      },
      timeout, cancel);
  return stream;
}

double Sample(const std::string& scrape, const std::string& name_and_labels) {
  std::istringstream lines(scrape);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(name_and_labels + " ", 0) == 0) return std::stod(line.substr(name_and_labels.size() + 1));
  }
  return -1;
}

v1::MergeRequest Merge(const std::string& method, const std::string& output,
                       const std::vector<std::pair<std::string, double>>& inputs, int rank) {
  v1::MergeRequest request;
  request.set_method(method);
  request.set_output(output);
  request.set_rank(rank);
  for (const auto& [variant, weight] : inputs) {
    v1::MergeInput* input = request.add_inputs();
    input->set_variant(variant);
    input->set_weight(weight);
  }
  return request;
}

grpc::Status RegisterAdapter(DeltaserveClient& client, const std::string& name, const std::string& path,
                             v1::Variant* variant) {
  grpc::ClientContext context;
  v1::RegisterAdapterRequest request;
  request.set_name(name);
  request.set_path(path);
  v1::Variant ignored;
  return client.variants().RegisterAdapter(&context, request, variant ? variant : &ignored);
}

grpc::Status DeleteVariant(DeltaserveClient& client, const std::string& name, bool drain) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::DeleteVariantRequest request;
  request.set_name(name);
  request.set_drain(drain);
  v1::DeleteVariantResponse response;
  return client.variants().DeleteVariant(&context, request, &response);
}

grpc::Status SubmitMerge(DeltaserveClient& client, const v1::MergeRequest& request, v1::Job* job) {
  grpc::ClientContext context;
  return client.jobs().SubmitMerge(&context, request, job);
}

grpc::Status SubmitFinetune(DeltaserveClient& client, const v1::FinetuneRequest& request, v1::Job* job) {
  grpc::ClientContext context;
  return client.jobs().SubmitFinetune(&context, request, job);
}

grpc::Status SubmitUnlearn(DeltaserveClient& client, const v1::UnlearnRequest& request, v1::Job* job) {
  grpc::ClientContext context;
  return client.jobs().SubmitUnlearn(&context, request, job);
}

grpc::Status SubmitEdit(DeltaserveClient& client, const v1::EditRequest& request, v1::Job* job) {
  grpc::ClientContext context;
  return client.jobs().SubmitEdit(&context, request, job);
}

grpc::Status SubmitStats(DeltaserveClient& client, const v1::StatsRequest& request, v1::Job* job) {
  grpc::ClientContext context;
  return client.jobs().SubmitStats(&context, request, job);
}

grpc::Status GetJob(DeltaserveClient& client, const std::string& id, v1::Job* job) {
  grpc::ClientContext context;
  v1::GetJobRequest request;
  request.set_id(id);
  return client.jobs().GetJob(&context, request, job);
}

grpc::Status CancelJob(DeltaserveClient& client, const std::string& id, v1::Job* job) {
  grpc::ClientContext context;
  v1::CancelJobRequest request;
  request.set_id(id);
  return client.jobs().CancelJob(&context, request, job);
}

v1::Job ExpectSucceeds(DeltaserveClient& client, const grpc::Status& submitted, const v1::Job& job) {
  EXPECT_TRUE(submitted.ok()) << submitted.error_message();
  if (!submitted.ok()) return job;
  std::vector<v1::Job> updates = WatchJob(client, job.id());
  EXPECT_FALSE(updates.empty());
  if (updates.empty()) return job;
  EXPECT_EQ(updates.back().state(), v1::SUCCEEDED) << updates.back().error();
  return updates.back();
}

grpc::Status GetVariant(DeltaserveClient& client, const std::string& name, v1::Variant* variant) {
  grpc::ClientContext context;
  v1::GetVariantRequest request;
  request.set_name(name);
  return client.variants().GetVariant(&context, request, variant);
}

std::vector<v1::Job> WatchJob(DeltaserveClient& client, const std::string& id, grpc::Status* status) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  v1::WatchJobRequest request;
  request.set_id(id);
  auto reader = client.jobs().WatchJob(&context, request);
  std::vector<v1::Job> updates;
  v1::Job job;
  while (reader->Read(&job)) updates.push_back(job);
  grpc::Status finished = reader->Finish();
  EXPECT_TRUE(finished.ok() || status != nullptr) << finished.error_message();
  if (status != nullptr) *status = finished;
  return updates;
}

int RunDeltactl(const std::string& arguments, std::string* out, std::string* err) {
  const std::string directory = MakeTempDir("deltactl");
  const std::string command = std::string(DELTACTL_BINARY) + " " + arguments + " > " + directory +
                              "/out 2> " + directory + "/err";
  int status = std::system(command.c_str());
  auto read = [&](const char* name) {
    std::ifstream file(directory + "/" + name);
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
  };
  *out = read("out");
  *err = read("err");
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace deltaserve::testing
