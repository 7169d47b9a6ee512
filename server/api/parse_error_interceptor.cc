#include "server/api/parse_error_interceptor.h"

#include <string>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/stubs/logging.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "server/common/log.h"

namespace deltaserve::api {
namespace {

// The last complaint protobuf logged on this thread while parsing (the server deserializes a
// request on the thread that then runs the interceptor).
thread_local std::string last_parse_complaint;

void OnProtobufLog(google::protobuf::LogLevel level, const char* filename, int line, const std::string& message) {
  if (absl::StrContains(message, "invalid UTF-8")) {
    // A client's bad request, answered INVALID_ARGUMENT: not a server problem worth a log line.
    last_parse_complaint = message;
    return;
  }
  common::Log(absl::StrCat("protobuf: ", message),
              {{"level", level >= google::protobuf::LOGLEVEL_ERROR ? "error" : "warning"},
               {"source", absl::StrCat(filename, ":", line)}});
}

// RequestTypeOf: the request message type of "/package.Service/Method", "" when unknown.
std::string RequestTypeOf(const std::string& method) {
  if (method.size() < 2 || method[0] != '/') return "";
  const std::string dotted = absl::StrReplaceAll(method.substr(1), {{"/", "."}});
  const google::protobuf::MethodDescriptor* found =
      google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(dotted);
  return found == nullptr ? "" : found->input_type()->full_name();
}

class ParseErrorInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit ParseErrorInterceptor(grpc::experimental::ServerRpcInfo* info)
      : info_(info),
        single_request_(info->type() == grpc::experimental::ServerRpcInfo::Type::UNARY ||
                        info->type() == grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (single_request_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      if (methods->GetRecvMessage() == nullptr) {
        unparsed_ = true;
        complaint_ = std::move(last_parse_complaint);
      }
      last_parse_complaint.clear();
    }
    if (unparsed_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const std::string type = RequestTypeOf(info_->method());
      std::string message = absl::StrCat("the request to ", info_->method(), " could not be parsed as ",
                                         type.empty() ? "its message type" : type);
      if (!complaint_.empty()) {
        absl::StrAppend(&message, ": ", complaint_);
      } else {
        absl::StrAppend(&message, ": its bytes are not a protobuf message of that type (send what the .proto's "
                                  "generated code serializes)");
      }
      methods->ModifySendStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message));
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  bool single_request_;
  bool unparsed_ = false;
  std::string complaint_;
};

class ParseErrorInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new ParseErrorInterceptor(info);
  }
};

}  // namespace

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> ParseErrorInterceptors() {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<ParseErrorInterceptorFactory>());
  return factories;
}

void InstallProtobufParseErrorCapture() { google::protobuf::SetLogHandler(&OnProtobufLog); }

}  // namespace deltaserve::api
