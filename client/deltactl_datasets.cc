#include "client/deltactl_datasets.h"

#include <cstdio>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "client/deltactl_files.h"
#include "client/deltactl_progress.h"
#include "client/deltactl_report.h"

ABSL_DECLARE_FLAG(std::string, prefix);

namespace deltaserve::client {
namespace {

namespace v1 = deltaserve::v1;

int Usage() {
  std::fprintf(stderr, "usage: deltactl datasets upload NAME FILE | list [--prefix P] | get NAME | delete NAME\n");
  return 2;
}

void PrintDataset(const v1::Dataset& dataset) {
  std::printf("%-40s %6ld rows (%ld text, %ld prompt/completion) %10ld bytes  sha256 %s\n", dataset.name().c_str(),
              static_cast<long>(dataset.rows()), static_cast<long>(dataset.text_rows()),
              static_cast<long>(dataset.prompt_completion_rows()), static_cast<long>(dataset.size_bytes()),
              dataset.sha256().c_str());
}

int Upload(DeltaserveClient& client, const std::string& name, const std::string& path) {
  std::string bytes;
  if (!ReadWholeFile(path, &bytes)) {
    std::fprintf(stderr, "deltactl: cannot read %s\n", path.c_str());
    return 2;
  }
  v1::Dataset dataset;
  ProgressDisplay progress("upload " + name);
  grpc::Status status = client.UploadDataset(name, bytes, &dataset, 1 << 20,
                                             [&progress](int64_t sent, int64_t total) { progress.Update(sent, total); });
  progress.Finish();
  if (status.ok()) PrintDataset(dataset);
  return ReportStatus(client, status);
}

int List(DeltaserveClient& client) {
  v1::ListDatasetsRequest request;
  request.set_prefix(absl::GetFlag(FLAGS_prefix));
  do {
    grpc::ClientContext context;
    v1::ListDatasetsResponse response;
    grpc::Status status = client.datasets().ListDatasets(&context, request, &response);
    if (!status.ok()) return ReportStatus(client, status);
    for (const v1::Dataset& dataset : response.datasets()) PrintDataset(dataset);
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  return 0;
}

}  // namespace

int RunDatasetsCommand(DeltaserveClient& client, const std::vector<std::string>& arguments) {
  const std::string command = arguments.empty() ? "" : arguments[0];
  if (command == "upload" && arguments.size() == 3) return Upload(client, arguments[1], arguments[2]);
  if (command == "list" && arguments.size() == 1) return List(client);
  if ((command == "get" || command == "delete") && arguments.size() == 2) {
    grpc::ClientContext context;
    grpc::Status status;
    if (command == "get") {
      v1::GetDatasetRequest request;
      request.set_name(arguments[1]);
      v1::Dataset dataset;
      status = client.datasets().GetDataset(&context, request, &dataset);
      if (status.ok()) PrintDataset(dataset);
    } else {
      v1::DeleteDatasetRequest request;
      request.set_name(arguments[1]);
      v1::DeleteDatasetResponse response;
      status = client.datasets().DeleteDataset(&context, request, &response);
      if (status.ok()) std::printf("deleted %s\n", arguments[1].c_str());
    }
    return ReportStatus(client, status);
  }
  return Usage();
}

}  // namespace deltaserve::client
