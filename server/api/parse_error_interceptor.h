// ParseErrorInterceptor: a request that cannot be parsed (garbage bytes, or invalid UTF-8 in a
// `string` field, which proto3 forbids) never reaches a service: gRPC answers it itself, with
// UNIMPLEMENTED and no message (callback services) or INTERNAL (synchronous ones). This server
// interceptor notes, for unary and server-streaming methods, that the request did not parse, and
// rewrites the call's status to INVALID_ARGUMENT saying which message type could not be parsed
// and, when protobuf said so, which field held invalid UTF-8. (Client-streaming uploads see a
// chunk that does not parse as a failed read and refuse the upload themselves.)
//   builder.experimental().SetInterceptorCreators(ParseErrorInterceptors());
// InstallProtobufParseErrorCapture routes protobuf's log lines through Log, keeping each
// thread's last parse complaint for the interceptor; call it once at start.
#pragma once

#include <memory>
#include <vector>

#include <grpcpp/support/server_interceptor.h>

namespace deltaserve::api {

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> ParseErrorInterceptors();

void InstallProtobufParseErrorCapture();

}  // namespace deltaserve::api
