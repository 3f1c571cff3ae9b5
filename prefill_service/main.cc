// pdserve-prefill: serves pdserve.v1.PrefillService for one checkpoint, plus
// the standard gRPC health service and server reflection.
//
//   pdserve-prefill --model_dir models/stories260K --listen 127.0.0.1:50051
//
// Prints "pdserve-prefill listening on HOST:PORT" on stdout once it accepts
// calls; logs go to stderr. SIGINT / SIGTERM: health turns NOT_SERVING,
// calls in flight get a few seconds, then the process exits 0.
#include <glog/logging.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kernels/backend_factory.h"
#include "prefill_service/prefill_engine.h"
#include "prefill_service/prefill_metrics.h"
#include "prefill_service/prefill_server.h"
#include "shared/allocator_tuning.h"
#include "shared/flags_help.h"
#include "shared/metrics.h"
#include "shared/port_file.h"
#include "shared/status_macros.h"
#include "shared/stop_signals.h"

ABSL_FLAG(std::string, model_dir, "",
          "Hugging Face model directory (config.json, *.safetensors); required");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "HOST:PORT to listen on; port 0 picks a free port (see --port_file)");
ABSL_FLAG(std::string, device, "auto", "Backend: cpu, cuda, or auto (CUDA when present)");
ABSL_FLAG(std::string, cpu_weight_dtype, "f32",
          "CPU backend only: how weight matrices are held, f32 (the reference) or bf16 (half "
          "the bytes; activations rounded to bf16 at each GEMM)");
ABSL_FLAG(std::string, port_file, "",
          "If set, the bound port is written here (atomically) once the server listens");
ABSL_FLAG(int64_t, max_chunk_bytes, int64_t{1} << 20,
          "Largest K+V payload of one KvChunk message, bytes; requests may ask for less");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{64} << 20,
          "gRPC max send and receive message size, bytes");
ABSL_FLAG(int, max_prefill_batch_tokens, 8192,
          "Prompt tokens the model's worker takes into one batched forward (queued requests in "
          "order; a longer single prompt runs alone)");
ABSL_FLAG(int, prefill_chunk_tokens, 2048,
          "Most tokens of one forward step; longer prompts and batches run in chunks, which "
          "bounds activation memory; 0: no limit");
ABSL_FLAG(int, max_queued_requests, 256,
          "Prefill requests that may wait for the model; more are RESOURCE_EXHAUSTED");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "On SIGINT/SIGTERM, how long calls in flight may take before they are cancelled");
ABSL_FLAG(std::string, metrics_listen, "",
          "IP:PORT for Prometheus metrics over HTTP (GET /metrics); empty: off; port 0: any "
          "free port (printed on stdout)");

namespace pdserve {
namespace {

// "HOST:PORT" -> "HOST" (IPv6 "[::1]:0" -> "[::1]").
std::string ListenHost(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  return colon == std::string::npos ? listen : listen.substr(0, colon);
}

absl::Status Serve(const StopSignals& stop_signals) {
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  if (model_dir.empty()) return absl::InvalidArgumentError("--model_dir is required");
  const int64_t max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  PrefillServerOptions options;
  options.max_chunk_bytes = absl::GetFlag(FLAGS_max_chunk_bytes);
  // A chunk also carries a few header bytes; FinalHidden is far smaller.
  constexpr int64_t kMessageOverhead = 64 << 10;
  if (max_message_bytes > INT32_MAX ||
      options.max_chunk_bytes + kMessageOverhead > max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_message_bytes: ", max_message_bytes, " must be at least --max_chunk_bytes (",
        options.max_chunk_bytes, ") + ", kMessageOverhead, " and at most ", INT32_MAX));
  }

  const absl::Time load_start = absl::Now();
  PrefillEngineOptions engine_options;
  engine_options.max_batch_tokens = absl::GetFlag(FLAGS_max_prefill_batch_tokens);
  engine_options.chunk_tokens = absl::GetFlag(FLAGS_prefill_chunk_tokens);
  engine_options.max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests);
  if (engine_options.max_batch_tokens < 1 || engine_options.chunk_tokens < 0 ||
      engine_options.max_queued_requests < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_prefill_batch_tokens (", engine_options.max_batch_tokens,
                     ") and --max_queued_requests (", engine_options.max_queued_requests,
                     ") must be positive, --prefill_chunk_tokens (", engine_options.chunk_tokens,
                     ") not negative"));
  }
  PDSERVE_ASSIGN_OR_RETURN(engine_options.cpu_backend.weight_dtype,
                           ParseCpuWeightDtype(absl::GetFlag(FLAGS_cpu_weight_dtype)));
  PDSERVE_ASSIGN_OR_RETURN(
      std::unique_ptr<PrefillEngine> engine,
      PrefillEngine::Load(model_dir, absl::GetFlag(FLAGS_device), engine_options));
  const ModelConfig& config = engine->config();
  // Fails now, not on every request, when --max_chunk_bytes cannot hold one token.
  PDSERVE_RETURN_IF_ERROR(PlanChunks(0, options.max_chunk_bytes,
                                     config.num_kv_heads * config.head_dim, engine->kv_dtype())
                              .status());
  LOG(INFO) << "loaded " << config.architecture << " from " << model_dir << " ("
            << engine->parameter_count() << " parameters, " << config.num_layers << " layers) on "
            << engine->device()
            << (engine->device() == "cpu"
                    ? absl::StrCat(" (weights ", absl::GetFlag(FLAGS_cpu_weight_dtype), ")")
                    : std::string())
            << " in " << absl::ToDoubleMilliseconds(absl::Now() - load_start) << " ms";

  MetricsRegistry metrics_registry;
  PrefillMetrics metrics(&metrics_registry);
  options.metrics = &metrics;
  PrefillServer service(engine.get(), options);
  // Declared after the engine and the service it samples, so it stops first.
  metrics.SampleAtCollection([e = engine.get()] { return e->queued_jobs(); },
                             [s = &service] { return s->active_streams(); });
  std::unique_ptr<MetricsHttpServer> metrics_server;
  if (const std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
      !metrics_listen.empty()) {
    PDSERVE_ASSIGN_OR_RETURN(metrics_server,
                             MetricsHttpServer::Start(metrics_listen, &metrics_registry));
    std::printf("pdserve-prefill metrics on %s:%d\n", ListenHost(metrics_listen).c_str(),
                metrics_server->port());
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("--listen: cannot listen on ", listen));
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) PDSERVE_RETURN_IF_ERROR(WritePortFile(port_file, port));
  std::printf("pdserve-prefill listening on %s:%d\n", ListenHost(listen).c_str(), port);
  std::fflush(stdout);

  const int signal_number = stop_signals.Wait();
  LOG(INFO) << "signal " << signal_number << ": shutting down";
  server->GetHealthCheckService()->Shutdown();
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_shutdown_grace)));
  server->Wait();
  LOG(INFO) << "stopped";
  return absl::OkStatus();
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  // Before any allocation worth keeping and any thread: malloc settings for
  // the KV stream's large message buffers (why: shared/allocator_tuning.h).
  const bool allocator_tuned = pdserve::TuneAllocatorForStreaming();
  const pdserve::StopSignals stop_signals;  // before any thread exists

  absl::SetProgramUsageMessage(
      "Serves pdserve.v1.PrefillService.\n  pdserve-prefill --model_dir DIR [--listen HOST:PORT] "
      "[--device cpu|cuda|auto] [--port_file PATH]");
  pdserve::ShowMainFlagsInHelp();
  absl::ParseCommandLine(argc, argv);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  if (!allocator_tuned) LOG(WARNING) << "glibc refused the malloc thresholds (mallopt)";

  const absl::Status status = pdserve::Serve(stop_signals);
  if (!status.ok()) {
    LOG(ERROR) << "pdserve-prefill: " << status;
    return 1;
  }
  return 0;
}
