// deltaserve: flags, wiring and the signal loop. Nothing else lives here.
#include <signal.h>
#include <unistd.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_builder.h>
#include <google/protobuf/util/message_differencer.h>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "server/api/datasets_service.h"
#include "server/api/generation_front.h"
#include "server/api/generation_service.h"
#include "server/api/http_server.h"
#include "server/api/openai_api.h"
#include "server/api/parse_error_interceptor.h"
#include "server/api/jobs_service.h"
#include "server/api/server_credentials.h"
#include "server/api/serving_state.h"
#include "server/api/variants_service.h"
#include "server/auth/audit_log.h"
#include "server/auth/authenticator.h"
#include "server/auth/quota_tracker.h"
#include "server/auth/server_config.h"
#include "server/auth/settings_flags.h"
#include "server/common/clock.h"
#include "server/common/file_util.h"
#include "server/common/flag_names.h"
#include "server/common/log.h"
#include "server/common/memory_reuse.h"
#include "server/control/dataset_store.h"
#include "server/control/finetune_jobs.h"
#include "server/control/job_runner.h"
#include "server/control/merge_jobs.h"
#include "server/control/unlearn_jobs.h"
#include "server/control/edit_jobs.h"
#include "server/model/model_fingerprint.h"
#include "server/control/shared_variants.h"
#include "server/control/variant_registry.h"
#include "server/engine/engine.h"
#include "server/model/chat_template.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer_loader.h"
#include "server/telemetry/server_metrics.h"

ABSL_FLAG(std::string, model_dir, "", "Hugging Face model directory (config.json, safetensors, tokenizer)");
ABSL_FLAG(std::string, model_name, "", "name of the base model in the API (default: the directory's name)");
ABSL_FLAG(std::string, data_dir, "deltaserve-data", "directory where the server keeps its state");
ABSL_FLAG(std::string, host, "127.0.0.1", "address to serve gRPC on");
ABSL_FLAG(int, port, 50051, "gRPC port (0 = pick a free one and print it)");
ABSL_FLAG(int, metrics_port, 9464, "Prometheus /metrics port (0 = pick a free one, -1 = off)");
ABSL_FLAG(int, http_port, 8000,
          "OpenAI-compatible HTTP API port on --host: /v1/completions, /v1/chat/completions, /v1/models, /health, "
          "and /metrics for admins (0 = pick a free one, -1 = off)");
ABSL_FLAG(int, http_threads, 256,
          "HTTP requests handled at once (a streamed response holds one until it ends); threads start as needed");
ABSL_FLAG(int, http_max_connections, 1024,
          "open HTTP connections at most; beyond it a new one replaces the oldest idle one, or gets 503 when every "
          "connection has a request running");
ABSL_FLAG(double, http_header_timeout_seconds, 10, "time a new HTTP connection has to send its request's head");
ABSL_FLAG(double, http_body_timeout_seconds, 60, "time an HTTP request has to send its body once its head is read");
ABSL_FLAG(double, http_keep_alive_seconds, 15, "an idle keep-alive HTTP connection closes after this");
ABSL_FLAG(bool, vllm_metrics, true,
          "also export vllm:num_requests_waiting, vllm:num_requests_running, vllm:kv_cache_usage_perc and "
          "vllm:lora_requests_info, the gauges the Gateway API Inference Extension's endpoint picker reads by default, "
          "on the metrics port's /metrics/endpoint-picker and the HTTP API port's admin-only /metrics (the metrics "
          "port's /metrics keeps to deltaserve_* names, which pass promtool)");
ABSL_FLAG(std::string, metrics_host, "127.0.0.1", "address to serve /metrics on");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda or cuda:N");
ABSL_FLAG(std::string, dtype, "float32",
          "compute dtype (activations, accumulation, norms, attention, KV cache): float32, float16, bfloat16");
ABSL_FLAG(std::string, weight_dtype, "auto",
          "storage width of the base weight matrices: auto (computing in float32 on the CPU, the "
          "checkpoint's own width, served from the mapped file; else --dtype), float32, bfloat16, "
          "float16, or int8 (weight-only, one scale per output channel; CPU)");
ABSL_FLAG(int, threads, 0, "intra-op CPU threads of the engine's steps (0 = one per CPU core)");
ABSL_FLAG(int64_t, max_batch_tokens, 2048, "tokens per forward pass (decode + prefill chunks)");
ABSL_FLAG(double, itl_target_ms, 200,
          "inter-token latency target for running streams while prompts are prefilled: a step that decodes takes "
          "only the prompt tokens its measured cost allows within it (0 = off: prompt chunks up to "
          "--max-batch-tokens)");
ABSL_FLAG(int64_t, max_running_requests, 64, "requests in the running batch at most");
ABSL_FLAG(int64_t, max_queued_requests, 256, "waiting requests before RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, kv_cache_bytes, int64_t{1} << 30, "KV cache budget in bytes");
ABSL_FLAG(int64_t, kv_block_tokens, 16, "tokens per KV cache block");
ABSL_FLAG(bool, prefix_caching, true,
          "keep full blocks of prompt KV after requests end and reuse them for prompts that start with the same "
          "tokens under the same variant (--prefix-caching=false turns it off)");
ABSL_FLAG(int32_t, default_max_tokens, 256, "max_tokens when a request leaves it 0");
ABSL_FLAG(int32_t, max_tokens_limit, 4096, "largest max_tokens a request may ask for");
ABSL_FLAG(std::vector<std::string>, adapter_dir, {},
          "directories whose PEFT adapters (DIR/NAME, DIR/NAMESPACE/NAME) are registered at start-up");
ABSL_FLAG(std::vector<std::string>, adapter_root, {},
          "directories under which RegisterAdapter may read adapters (repeatable; none = off)");
ABSL_FLAG(int64_t, adapter_cache_bytes, int64_t{1} << 30,
          "device memory for adapter deltas; least recently used idle adapters are evicted beyond it");
ABSL_FLAG(int64_t, adapter_host_cache_bytes, int64_t{4} << 30,
          "host memory for adapters evicted from the device; beyond it they are re-read from disk");
ABSL_FLAG(int64_t, max_upload_bytes, int64_t{1} << 30, "largest adapter_model.safetensors UploadAdapter accepts");
ABSL_FLAG(std::string, config, "", "server configuration file (protobuf text format, deltaserve.v1.ServerConfig: "
          "tenants and their API-key digests, and any of these flags under `server { }`; a flag on the command "
          "line wins); tenants are reloaded on SIGHUP");
ABSL_FLAG(bool, allow_unauthenticated, false,
          "serve a non-loopback --host without tenants (anyone who can connect may do anything)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA: require client certificates it signed (mutual TLS)");
ABSL_FLAG(int, health_port, -1,
          "a plaintext port serving only grpc.health.v1 on --host, for probes when gRPC uses TLS "
          "(0 = pick one, -1 = off)");
ABSL_FLAG(int64_t, max_dataset_bytes, int64_t{256} << 20, "largest JSONL file UploadDataset accepts");
ABSL_FLAG(int64_t, max_dataset_rows, 1'000'000, "most rows (non-blank lines) UploadDataset accepts");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{4} << 20,
          "largest gRPC message the server receives (uploads stream in chunks below it)");
ABSL_FLAG(int32_t, job_workers, 1, "jobs (merges, ...) that run at once, beside serving");
ABSL_FLAG(int64_t, job_memory_bytes, int64_t{4} << 30,
          "memory all running jobs may use together (their estimates); a job that needs more is refused");
ABSL_FLAG(int32_t, job_threads, 1, "intra-op CPU threads of each running job");
ABSL_FLAG(int32_t, job_step_pause_ms, 0,
          "pause between a job's steps, trading job speed for serving latency on a busy CPU");
ABSL_FLAG(std::string, shared_dir, "",
          "a directory every replica mounts (a ReadWriteMany volume): variants made on any replica are published "
          "there with content hashes and become servable on all (empty = off)");
ABSL_FLAG(double, shared_poll_seconds, 2, "how often replicas look for variants published or deleted by others");
ABSL_FLAG(std::string, log_format, "text",
          "text (TIME deltaserve: message key=value...) or json (one object per line, for log collectors); "
          "every finished request logs one line with its request_id");
ABSL_FLAG(double, shutdown_grace_seconds, 30, "on SIGTERM, how long in-flight requests may finish");

namespace {

using deltaserve::common::Log;

int Fail(const absl::Status& status) {
  Log(absl::StrCat("fatal: ", status.ToString()));
  return 1;
}

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

int main(int argc, char** argv) {
  deltaserve::common::ReuseFreedMemory();
  absl::SetProgramUsageMessage("deltaserve --model-dir DIR [flags]: serves a base model and its variants over gRPC");
  std::vector<std::string> argument_storage;
  std::vector<char*> arguments = deltaserve::common::NormalizeFlagNames(argc, argv, argument_storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  // Every flag here can be set in the configuration file too: its schema must know them all.
  if (auto missing = deltaserve::auth::FlagsWithoutSettings("server/main.cc", {"config"}); !missing.empty()) {
    return Fail(absl::InternalError(absl::StrCat("flags without a ServerSettings field in config.proto: ",
                                                 absl::StrJoin(missing, ", "))));
  }
  const std::string config_path = absl::GetFlag(FLAGS_config);
  deltaserve::v1::ServerConfig config;
  if (!config_path.empty()) {
    auto loaded = deltaserve::auth::LoadServerConfig(config_path);
    if (!loaded.ok()) return Fail(loaded.status());
    config = std::move(*loaded);
    if (absl::Status applied = deltaserve::auth::ApplySettingsToFlags(config.server(), config_path, argument_storage);
        !applied.ok()) {
      return Fail(applied);
    }
  }

  const std::string log_format = absl::GetFlag(FLAGS_log_format);
  if (log_format != "text" && log_format != "json") {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--log-format must be text or json, not \"", log_format, "\"")));
  }
  deltaserve::common::SetLogFormat(log_format == "json" ? deltaserve::common::LogFormat::kJson
                                                        : deltaserve::common::LogFormat::kText);

  for (const auto& [name, value] : {std::pair<const char*, double>{"--http-header-timeout-seconds",
                                                                    absl::GetFlag(FLAGS_http_header_timeout_seconds)},
                                    {"--http-body-timeout-seconds", absl::GetFlag(FLAGS_http_body_timeout_seconds)},
                                    {"--http-keep-alive-seconds", absl::GetFlag(FLAGS_http_keep_alive_seconds)},
                                    {"--http-max-connections", absl::GetFlag(FLAGS_http_max_connections)},
                                    {"--http-threads", absl::GetFlag(FLAGS_http_threads)}}) {
    if (!(value > 0)) return Fail(absl::InvalidArgumentError(absl::StrCat(name, " must be positive, not ", value)));
  }

  // Signals are taken by sigwait below, never by a handler; block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  if (model_dir.empty()) return Fail(absl::InvalidArgumentError("--model-dir is required"));
  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  ::mkdir(data_dir.c_str(), 0750);
  struct stat data_info;
  if (::stat(data_dir.c_str(), &data_info) != 0 || !S_ISDIR(data_info.st_mode)) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--data-dir ", data_dir, " is not a usable directory")));
  }

  auto metrics = std::make_shared<deltaserve::telemetry::ServerMetrics>(
      std::make_shared<prometheus::Registry>(), absl::GetFlag(FLAGS_max_running_requests),
      absl::GetFlag(FLAGS_vllm_metrics));
  // The metrics port is for in-cluster scrapers (its series name variants, so the Kubernetes
  // manifests admit only Prometheus and the endpoint picker to it): /metrics has deltaserve_*,
  // /metrics/endpoint-picker adds the vLLM-named gauges (see ServerMetrics::Exposition).
  auto send_metrics = [&metrics](bool with_vllm_gauges, deltaserve::api::HttpResponse& response) {
    response.Send(200, deltaserve::telemetry::ServerMetrics::kExpositionContentType,
                  metrics->Exposition(with_vllm_gauges));
  };
  std::unique_ptr<deltaserve::api::HttpServer> metrics_server;
  int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port >= 0) {
    deltaserve::api::HttpServerOptions metrics_options;
    metrics_options.host = absl::GetFlag(FLAGS_metrics_host);
    metrics_options.port = metrics_port;
    metrics_options.threads = 4;
    auto started = deltaserve::api::HttpServer::Start(
        metrics_options,
        {{"GET", "/metrics",
          [&send_metrics](const deltaserve::api::HttpRequest&, deltaserve::api::HttpResponse& response) {
            send_metrics(false, response);
          }},
         {"GET", "/metrics/endpoint-picker",
          [&send_metrics](const deltaserve::api::HttpRequest&, deltaserve::api::HttpResponse& response) {
            send_metrics(true, response);
          }}});
    if (!started.ok()) return Fail(started.status());
    metrics_server = std::move(*started);
    metrics_port = metrics_server->port();
  }

  auto device = deltaserve::model::ParseDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) return Fail(device.status());
  auto dtype = deltaserve::model::ParseDtype(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return Fail(dtype.status());
  auto weight_dtype = deltaserve::model::ParseWeightDtype(absl::GetFlag(FLAGS_weight_dtype));
  if (!weight_dtype.ok()) return Fail(weight_dtype.status());
  absl::Time load_started = absl::Now();
  deltaserve::model::ModelOptions model_options;
  model_options.dtype = *dtype;
  model_options.device = *device;
  model_options.weight_dtype = *weight_dtype;
  auto model = deltaserve::model::LlamaModel::Load(model_dir, model_options);
  if (!model.ok()) return Fail(model.status());
  auto tokenizer = deltaserve::model::LoadTokenizer(model_dir, (*model)->config());
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  std::shared_ptr<const deltaserve::model::LlamaModel> shared_model = std::move(*model);
  Log(absl::StrCat("loaded ", shared_model->config().architecture, " from ", model_dir, " (",
                   shared_model->WeightBytes() >> 20, " MiB of weights stored as ",
                   shared_model->weight_width().has_value()
                       ? deltaserve::model::WidthName(*shared_model->weight_width())
                       : std::string("mixed widths"),
                   ", computing in ", absl::GetFlag(FLAGS_dtype), " on ", device->str(), ") in ",
                   absl::FormatDuration(absl::Now() - load_started)));

  // Everything that decides by time reads this one clock (tests inject manual ones instead).
  deltaserve::common::Clock* const clock = deltaserve::common::RealClock();
  deltaserve::engine::EngineOptions engine_options;
  engine_options.clock = clock;
  engine_options.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  engine_options.itl_target = absl::Milliseconds(absl::GetFlag(FLAGS_itl_target_ms));
  engine_options.max_running_requests = absl::GetFlag(FLAGS_max_running_requests);
  engine_options.max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests);
  engine_options.kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_bytes);
  engine_options.kv_block_tokens = absl::GetFlag(FLAGS_kv_block_tokens);
  engine_options.prefix_caching = absl::GetFlag(FLAGS_prefix_caching);
  // The base model's fingerprint names it in prefix cache keys and in cached edit statistics.
  auto fingerprint = deltaserve::model::ModelFingerprint(model_dir);
  if (!fingerprint.ok()) return Fail(fingerprint.status());
  engine_options.base_fingerprint = *fingerprint;
  engine_options.default_max_tokens = absl::GetFlag(FLAGS_default_max_tokens);
  engine_options.max_tokens_limit = absl::GetFlag(FLAGS_max_tokens_limit);
  engine_options.adapter_cache_bytes = absl::GetFlag(FLAGS_adapter_cache_bytes);
  engine_options.adapter_host_cache_bytes = absl::GetFlag(FLAGS_adapter_host_cache_bytes);
  engine_options.threads = absl::GetFlag(FLAGS_threads);
  auto engine = deltaserve::engine::Engine::Create(engine_options, shared_model,
                                                   std::move(*tokenizer), metrics.get());
  if (!engine.ok()) return Fail(engine.status());

  deltaserve::control::VariantRegistryOptions registry_options;
  registry_options.data_dir = data_dir;
  registry_options.adapter_roots = absl::GetFlag(FLAGS_adapter_root);
  registry_options.upload_limits.max_weights_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  auto registry = deltaserve::control::VariantRegistry::Create(registry_options, engine->get());
  if (!registry.ok()) return Fail(registry.status());
  for (const std::string& directory : absl::GetFlag(FLAGS_adapter_dir)) {
    auto registered = (*registry)->RegisterDirectory(directory);
    if (!registered.ok()) return Fail(registered.status());
    Log(absl::StrCat("registered ", *registered, " adapters from ", directory));
  }

  auto datasets = deltaserve::control::DatasetStore::Create(
      data_dir, {absl::GetFlag(FLAGS_max_dataset_bytes), absl::GetFlag(FLAGS_max_dataset_rows)}, (*registry)->store());
  if (!datasets.ok()) return Fail(datasets.status());

  deltaserve::control::JobRunnerOptions job_options;
  job_options.clock = clock;
  job_options.workers = absl::GetFlag(FLAGS_job_workers);
  job_options.memory_bytes = absl::GetFlag(FLAGS_job_memory_bytes);
  job_options.threads_per_job = absl::GetFlag(FLAGS_job_threads);
  job_options.step_pause = absl::Milliseconds(absl::GetFlag(FLAGS_job_step_pause_ms));
  job_options.observer = metrics.get();
  auto job_runner = deltaserve::control::JobRunner::Create(job_options, (*registry)->store());
  if (!job_runner.ok()) return Fail(job_runner.status());
  deltaserve::control::MergeJobs merges(registry->get(), job_runner->get());
  deltaserve::control::FinetuneJobs finetunes(registry->get(), datasets->get(), job_runner->get());
  deltaserve::control::UnlearnJobs unlearns(registry->get(), datasets->get(), job_runner->get());
  // Edit statistics are cached per base model: its fingerprint tells models of the same name apart.
  deltaserve::control::EditJobs edits(registry->get(), datasets->get(), job_runner->get(),
                                      {deltaserve::common::JoinPath(data_dir, "stats"), *fingerprint});
  if (absl::Status started = (*job_runner)->Start(); !started.ok()) return Fail(started);
  // Running jobs use `merges`, `finetunes`, `unlearns`, `edits`, the datasets and the registry: they stop before any goes,
  // however main ends.
  absl::Cleanup stop_jobs = [&job_runner] { (*job_runner)->Stop(); };

  auto authenticator = std::make_unique<deltaserve::auth::Authenticator>(config, config_path);
  const std::string host = absl::GetFlag(FLAGS_host);
  if (authenticator->open()) {
    const bool loopback = host == "127.0.0.1" || host == "localhost" || host == "::1" || host == "[::1]";
    if (!loopback && !absl::GetFlag(FLAGS_allow_unauthenticated)) {
      return Fail(absl::FailedPreconditionError(absl::StrCat(
          "--host ", host, " is reachable from other machines, and no tenants are configured: give --config with "
          "tenants (API keys), or --allow-unauthenticated to serve it open")));
    }
    Log("no tenants configured: every caller is an admin without a key (open server)");
  }
  auto audit = deltaserve::auth::AuditLog::Open(deltaserve::common::JoinPath(data_dir, "audit.log"));
  if (!audit.ok()) return Fail(audit.status());
  deltaserve::auth::QuotaTracker quotas(clock);
  deltaserve::api::Gatekeeper gate(authenticator.get(), audit->get(), &quotas,
                                   {registry->get(), datasets->get(), job_runner->get()});

  deltaserve::api::ServingState serving_state;
  std::string model_name = absl::GetFlag(FLAGS_model_name);
  if (model_name.empty()) model_name = BaseName(model_dir);
  deltaserve::api::GenerationFront front(engine->get(), registry->get(), &serving_state, &gate, model_name);
  // Replicas sharing variants: publish ours, import theirs, fetch an unknown one on first request.
  std::unique_ptr<deltaserve::control::SharedVariants> shared_variants;
  if (!absl::GetFlag(FLAGS_shared_dir).empty()) {
    char hostname[256] = "replica";
    ::gethostname(hostname, sizeof(hostname) - 1);
    auto started = deltaserve::control::SharedVariants::Start(
        {absl::GetFlag(FLAGS_shared_dir), absl::Seconds(std::max(0.05, absl::GetFlag(FLAGS_shared_poll_seconds))),
         absl::StrCat(hostname, ":", ::getpid())},
        registry->get());
    if (!started.ok()) return Fail(started.status());
    shared_variants = std::move(*started);
    front.SetFetcher([&shared_variants](const std::string& name) { return shared_variants->Fetch(name); });
    Log(absl::StrCat("sharing variants through ", absl::GetFlag(FLAGS_shared_dir)));
  }
  deltaserve::api::GenerationService generation(&front, metrics.get());
  deltaserve::api::VariantsService variants(registry->get(), metrics.get(), &serving_state, &gate, model_name);
  deltaserve::api::DatasetsService dataset_service(datasets->get(), metrics.get(), &serving_state, &gate);
  deltaserve::api::JobsService jobs(job_runner->get(), &merges, &finetunes, &unlearns, &edits, metrics.get(),
                                    &serving_state, &gate);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string address = absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port));
  auto credentials = deltaserve::api::ServerCredentialsFor(
      absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_client_ca));
  if (!credentials.ok()) return Fail(credentials.status());
  builder.AddListeningPort(address, *credentials, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(
      std::clamp<int64_t>(absl::GetFlag(FLAGS_max_message_bytes), 1024, std::numeric_limits<int32_t>::max())));
  builder.RegisterService(&generation);
  builder.RegisterService(&variants);
  builder.RegisterService(&jobs);
  builder.RegisterService(&dataset_service);
  deltaserve::api::InstallProtobufParseErrorCapture();
  builder.experimental().SetInterceptorCreators(deltaserve::api::ParseErrorInterceptors());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat("cannot listen on ", address)));
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  // The plaintext probe port: its own server, with nothing but the health service.
  std::unique_ptr<grpc::Server> health_server;
  if (absl::GetFlag(FLAGS_health_port) >= 0) {
    grpc::ServerBuilder health_builder;
    int health_port = 0;
    health_builder.AddListeningPort(absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_health_port)),
                                    grpc::InsecureServerCredentials(), &health_port);
    health_server = health_builder.BuildAndStart();
    if (health_server == nullptr || health_port == 0) {
      return Fail(absl::UnavailableError(absl::StrCat("cannot listen on health port ", absl::GetFlag(FLAGS_health_port))));
    }
    health_server->GetHealthCheckService()->SetServingStatus(true);
    Log(absl::StrCat("health (plaintext) on port ", health_port));
  }
  // The OpenAI-compatible HTTP API, on the same front as gRPC's Generation.
  std::unique_ptr<deltaserve::api::HttpServer> http_server;
  int http_port = absl::GetFlag(FLAGS_http_port);
  absl::StatusOr<std::shared_ptr<const deltaserve::model::ChatTemplate>> chat_template =
      deltaserve::model::ChatTemplate::Load(model_dir);
  if (!chat_template.ok()) Log(absl::StrCat("warning: chat completions are off: ", chat_template.status().message()));
  deltaserve::api::OpenAiApi openai(&front, chat_template, &serving_state, metrics.get());
  if (http_port >= 0) {
    std::vector<deltaserve::api::HttpRoute> routes = openai.Routes();
    // Tenants reach this port, and the series name other tenants' variants: admins only.
    routes.push_back({"GET", "/metrics",
                      [&gate, &send_metrics](const deltaserve::api::HttpRequest& request,
                                             deltaserve::api::HttpResponse& response) {
                        absl::StatusOr<deltaserve::api::Access> access =
                            gate.AdmitAuthorization(request.Header("Authorization"));
                        if (!access.ok()) return deltaserve::api::OpenAiApi::SendError(access.status(), response);
                        if (!access->principal().admin) {
                          return deltaserve::api::OpenAiApi::SendError(
                              absl::PermissionDeniedError("/metrics on the API port is for admins (its series name "
                                                          "every tenant's variants): scrape the metrics port"),
                              response);
                        }
                        send_metrics(true, response);
                      }});
    deltaserve::api::HttpServerOptions http_options;
    http_options.host = host;
    http_options.port = http_port;
    http_options.threads = absl::GetFlag(FLAGS_http_threads);
    http_options.max_body_bytes = absl::GetFlag(FLAGS_max_message_bytes);
    http_options.max_connections = absl::GetFlag(FLAGS_http_max_connections);
    http_options.header_timeout = absl::Seconds(absl::GetFlag(FLAGS_http_header_timeout_seconds));
    http_options.body_timeout = absl::Seconds(absl::GetFlag(FLAGS_http_body_timeout_seconds));
    http_options.keep_alive_timeout = absl::Seconds(absl::GetFlag(FLAGS_http_keep_alive_seconds));
    http_options.not_found = &deltaserve::api::OpenAiApi::SendHttpError;
    auto started = deltaserve::api::HttpServer::Start(std::move(http_options), std::move(routes));
    if (!started.ok()) return Fail(started.status());
    http_server = std::move(*started);
    http_port = http_server->port();
  }
  // Tests and scripts read this line to find the ports.
  std::printf("deltaserve: serving model \"%s\" on %s:%d, metrics on port %d, http on port %d\n", model_name.c_str(),
              absl::GetFlag(FLAGS_host).c_str(), port, metrics_port, http_port);
  std::fflush(stdout);

  int signal_number = 0;
  while (sigwait(&signals, &signal_number) == 0 && signal_number == SIGHUP) {
    absl::Status reloaded = authenticator->Reload();
    Log(reloaded.ok() ? std::string("SIGHUP: configuration reloaded")
                      : absl::StrCat("SIGHUP: configuration NOT reloaded, the previous one stays: ", reloaded.message()));
    if (reloaded.ok() &&
        !google::protobuf::util::MessageDifferencer::Equals(authenticator->config()->server(), config.server())) {
      Log("SIGHUP: the file's server settings changed; they take effect at the next start");
    }
  }
  Log(absl::StrCat("received signal ", signal_number, ": draining"));
  serving_state.StartDraining();
  server->GetHealthCheckService()->SetServingStatus(false);
  if (health_server != nullptr) health_server->GetHealthCheckService()->SetServingStatus(false);
  (*engine)->AwaitSnapshot([](const deltaserve::engine::EngineSnapshot& snapshot) { return snapshot.active_requests == 0; },
                           clock->Now() + absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
  const int64_t unfinished = (*engine)->Snapshot().active_requests;
  if (unfinished > 0) Log(absl::StrCat("grace period over; cancelling ", unfinished, " requests"));
  // Running jobs stop at their next step and read FAILED ("interrupted"); queued ones run after
  // the next start.
  (*job_runner)->Stop();
  (*engine)->Stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (health_server != nullptr) health_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  Log("stopped");
  return 0;
}
