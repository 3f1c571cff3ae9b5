// pdserve-decode: the public Generate and Inspect services. Loads the model, checks every
// prefill instance serves the same one, and serves until SIGINT/SIGTERM.
#include <glog/logging.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "decode_service/decode_metrics.h"
#include "decode_service/decode_server.h"
#include "decode_service/engine.h"
#include "decode_service/inspect_client.h"
#include "decode_service/inspect_server.h"
#include "decode_service/kv_cache_sizing.h"
#include "decode_service/prefill_client.h"
#include "decode_service/prefill_target.h"
#include "decode_service/serving_model.h"
#include "kernels/backend_factory.h"
#include "shared/allocator_tuning.h"
#include "shared/flags_help.h"
#include "shared/kv_cache.h"
#include "shared/metrics.h"
#include "shared/port_file.h"
#include "shared/stop_signals.h"

ABSL_FLAG(std::string, model_dir, "", "Hugging Face model directory (required)");
ABSL_FLAG(std::string, listen, "127.0.0.1:50052", "HOST:PORT to serve on (port 0: any free)");
ABSL_FLAG(std::string, prefill_target, "",
          "prefill instances, ADDR[,ADDR...] (IP literals) or one dns:///NAME:PORT; "
          "load-balanced round robin (required)");
ABSL_FLAG(std::string, device, "auto", "cpu, cuda or auto");
ABSL_FLAG(std::string, cpu_weight_dtype, "f32",
          "CPU backend only: how weight matrices are held, f32 (the reference) or bf16 (half "
          "the bytes a decode step reads; activations rounded to bf16 at each GEMM)");
ABSL_FLAG(std::string, port_file, "", "write the bound port here (atomically) once listening");
ABSL_FLAG(int, kv_cache_blocks, 0,
          "KV blocks in the pool; 0: room for 64 full-context sequences, capped by "
          "--kv_cache_bytes");
ABSL_FLAG(int64_t, kv_cache_bytes, int64_t{4} << 30, "memory budget for the default KV pool");
ABSL_FLAG(int, block_size, 16, "tokens per KV block");
ABSL_FLAG(int, max_batch_size, 64, "sequences in one decode step");
ABSL_FLAG(int, max_new_tokens_cap, 2048, "largest max_new_tokens a request may ask for");
ABSL_FLAG(int, default_max_new_tokens, 128, "max_new_tokens for requests that give 0");
ABSL_FLAG(int, max_samples, 16,
          "largest output.n (samples of one prompt); at most --max_batch_size");
ABSL_FLAG(int64_t, max_prompt_bytes, 0,
          "largest prompt text (or all chat messages' contents) in bytes, refused before "
          "tokenizing; 0: 64 bytes per token of the model's context");
ABSL_FLAG(int, max_queue, 256, "requests that may wait for KV blocks before RESOURCE_EXHAUSTED");
ABSL_FLAG(int, prefill_timeout_ms, 60000, "deadline of one prefill call");
ABSL_FLAG(int, prefill_connect_timeout_ms, 30000,
          "how long start-up waits for every prefill target to answer GetModelInfo");
ABSL_FLAG(int64_t, prefill_max_chunk_bytes, 0,
          "KvChunk size asked of the prefill (0: the prefill's default)");
ABSL_FLAG(int, max_message_bytes, 64 << 20, "largest gRPC message sent or received, bytes");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "how long in-flight streams may finish at shutdown");
ABSL_FLAG(int, prefill_max_attempts, 3,
          "prefill streams one request may take: one that fails with UNAVAILABLE (instance "
          "gone) is retried on the next ready prefill instance");
ABSL_FLAG(std::string, metrics_listen, "",
          "IP:PORT for Prometheus metrics over HTTP (GET /metrics); empty: off; port 0: any "
          "free port (printed on stdout)");

namespace pdserve {
namespace {

absl::Status CheckPositive(const char* flag, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", value, " must be positive"));
}

absl::Status ValidateFlags() {
  if (absl::GetFlag(FLAGS_model_dir).empty()) {
    return absl::InvalidArgumentError("--model_dir is required");
  }
  if (absl::GetFlag(FLAGS_prefill_target).empty()) {
    return absl::InvalidArgumentError("--prefill_target is required");
  }
  for (auto [name, value] :
       {std::pair<const char*, int64_t>{"block_size", absl::GetFlag(FLAGS_block_size)},
        {"max_batch_size", absl::GetFlag(FLAGS_max_batch_size)},
        {"max_new_tokens_cap", absl::GetFlag(FLAGS_max_new_tokens_cap)},
        {"default_max_new_tokens", absl::GetFlag(FLAGS_default_max_new_tokens)},
        {"max_samples", absl::GetFlag(FLAGS_max_samples)},
        {"prefill_timeout_ms", absl::GetFlag(FLAGS_prefill_timeout_ms)},
        {"prefill_connect_timeout_ms", absl::GetFlag(FLAGS_prefill_connect_timeout_ms)},
        {"prefill_max_attempts", absl::GetFlag(FLAGS_prefill_max_attempts)},
        {"max_message_bytes", absl::GetFlag(FLAGS_max_message_bytes)},
        {"kv_cache_bytes", absl::GetFlag(FLAGS_kv_cache_bytes)}}) {
    absl::Status status = CheckPositive(name, value);
    if (!status.ok()) return status;
  }
  if (absl::GetFlag(FLAGS_kv_cache_blocks) < 0 || absl::GetFlag(FLAGS_max_queue) < 0 ||
      absl::GetFlag(FLAGS_prefill_max_chunk_bytes) < 0 ||
      absl::GetFlag(FLAGS_max_prompt_bytes) < 0) {
    return absl::InvalidArgumentError(
        "--kv_cache_blocks, --max_queue, --prefill_max_chunk_bytes and --max_prompt_bytes must "
        "not be negative");
  }
  if (absl::GetFlag(FLAGS_max_samples) > absl::GetFlag(FLAGS_max_batch_size)) {
    // A request's samples step together in one batch.
    return absl::InvalidArgumentError(
        absl::StrCat("--max_samples: ", absl::GetFlag(FLAGS_max_samples),
                     " exceeds --max_batch_size ", absl::GetFlag(FLAGS_max_batch_size)));
  }
  if (absl::GetFlag(FLAGS_default_max_new_tokens) > absl::GetFlag(FLAGS_max_new_tokens_cap)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--default_max_new_tokens: ", absl::GetFlag(FLAGS_default_max_new_tokens),
                     " exceeds --max_new_tokens_cap ", absl::GetFlag(FLAGS_max_new_tokens_cap)));
  }
  return absl::OkStatus();
}

// Host part of a HOST:PORT listen address ("[::]" stays bracketed).
std::string ListenHost(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  return colon == std::string::npos ? listen : listen.substr(0, colon);
}

int Run(const StopSignals& stop_signals) {
  absl::Status flags_ok = ValidateFlags();
  if (!flags_ok.ok()) {
    LOG(ERROR) << flags_ok.message();
    return 2;
  }
  absl::StatusOr<std::vector<std::string>> targets =
      SplitPrefillTargets(absl::GetFlag(FLAGS_prefill_target));
  absl::StatusOr<std::string> channel_target =
      targets.ok() ? PrefillChannelTarget(*targets) : targets.status();
  if (!channel_target.ok()) {
    LOG(ERROR) << channel_target.status().message();
    return 2;
  }

  absl::StatusOr<DType> cpu_weight_dtype =
      ParseCpuWeightDtype(absl::GetFlag(FLAGS_cpu_weight_dtype));
  if (!cpu_weight_dtype.ok()) {
    LOG(ERROR) << cpu_weight_dtype.status().message();
    return 2;
  }

  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  absl::StatusOr<std::unique_ptr<ServingModel>> model = ServingModel::Load(
      model_dir, absl::GetFlag(FLAGS_device), CpuBackendOptions{.weight_dtype = *cpu_weight_dtype});
  if (!model.ok()) {
    LOG(ERROR) << "cannot load model '" << model_dir << "': " << model.status();
    return 1;
  }
  const ModelConfig& config = (*model)->config();
  Backend& backend = (*model)->backend();
  LOG(INFO) << "loaded " << config.architecture << " from " << model_dir << " on " << backend.name()
            << (backend.name() == "cpu"
                    ? absl::StrCat(" (weights ", absl::GetFlag(FLAGS_cpu_weight_dtype), ")")
                    : std::string())
            << " (" << (*model)->parameter_count() << " parameters)";

  KvCacheOptions kv_options = KvCacheOptionsFor(config, absl::GetFlag(FLAGS_kv_cache_blocks),
                                                absl::GetFlag(FLAGS_block_size));
  if (kv_options.num_blocks == 0) {
    KvCacheSizing sizing;
    sizing.context_tokens = config.max_position_embeddings;
    sizing.block_size = kv_options.block_size;
    sizing.bytes_per_token = static_cast<size_t>(config.num_layers) * 2 * config.num_kv_heads *
                             config.head_dim * DTypeSize(backend.kv_dtype());
    sizing.max_bytes = absl::GetFlag(FLAGS_kv_cache_bytes);
    absl::StatusOr<int> blocks = DefaultKvCacheBlocks(sizing);
    if (!blocks.ok()) {
      LOG(ERROR) << blocks.status().message();
      return 2;
    }
    kv_options.num_blocks = *blocks;
  }
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(&backend, kv_options);
  if (!cache.ok()) {
    LOG(ERROR) << "cannot create the KV cache: " << cache.status();
    return 1;
  }
  LOG(INFO) << "KV cache: " << kv_options.num_blocks << " blocks of " << kv_options.block_size
            << " tokens, "
            << (*cache)->bytes_per_token() * kv_options.block_size *
                   static_cast<size_t>(kv_options.num_blocks)
            << " bytes";

  absl::Status prefill_ok =
      CheckPrefillTargets(*targets, (*model)->fingerprint(),
                          absl::Milliseconds(absl::GetFlag(FLAGS_prefill_connect_timeout_ms)),
                          absl::GetFlag(FLAGS_max_message_bytes));
  if (!prefill_ok.ok()) {
    LOG(ERROR) << "refusing to start: " << prefill_ok;
    return 1;
  }

  MetricsRegistry metrics_registry;
  DecodeMetrics metrics(&metrics_registry);

  PrefillClientOptions prefill_options;
  prefill_options.channel_target = *channel_target;
  prefill_options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  prefill_options.max_chunk_bytes = absl::GetFlag(FLAGS_prefill_max_chunk_bytes);
  prefill_options.max_attempts = absl::GetFlag(FLAGS_prefill_max_attempts);
  prefill_options.metrics = &metrics;
  PrefillClient prefill(prefill_options, PrefillExpectation::For(config, (*model)->fingerprint()));

  EngineOptions engine_options;
  engine_options.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  engine_options.max_queue = absl::GetFlag(FLAGS_max_queue);
  engine_options.prefill_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_prefill_timeout_ms));
  engine_options.eos_token_ids = config.eos_token_ids;
  engine_options.context_limit = config.max_position_embeddings;
  engine_options.tokenizer = &(*model)->tokenizer();
  engine_options.on_step = [&metrics](int batch_size, absl::Duration step) {
    metrics.OnDecodeStep(batch_size, step);
  };
  Engine engine(&(*model)->transformer(), cache->get(), &prefill, engine_options);

  RequestLimits limits;
  limits.max_new_tokens_cap = absl::GetFlag(FLAGS_max_new_tokens_cap);
  limits.default_max_new_tokens = absl::GetFlag(FLAGS_default_max_new_tokens);
  limits.max_samples = absl::GetFlag(FLAGS_max_samples);
  limits.max_prompt_bytes = absl::GetFlag(FLAGS_max_prompt_bytes);
  DecodeServer service(model->get(), &engine, limits, &metrics);
  // Inspect: hidden states from a prefill instance over its own client.
  InspectPrefillClient inspect_prefill(prefill_options,
                                       PrefillExpectation::For(config, (*model)->fingerprint()));
  absl::StatusOr<std::unique_ptr<InspectServer>> inspect = InspectServer::Create(
      model->get(), &inspect_prefill, absl::Milliseconds(absl::GetFlag(FLAGS_prefill_timeout_ms)));
  if (!inspect.ok()) {
    LOG(ERROR) << "cannot describe the model for Inspect: " << inspect.status();
    return 1;
  }

  // After the engine and the cache it samples, so it stops before they go.
  metrics.SampleAtCollection(&engine, cache->get());
  std::unique_ptr<MetricsHttpServer> metrics_server;
  if (const std::string listen = absl::GetFlag(FLAGS_metrics_listen); !listen.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> started =
        MetricsHttpServer::Start(listen, &metrics_registry);
    if (!started.ok()) {
      LOG(ERROR) << started.status().message();
      return 1;
    }
    metrics_server = std::move(started).value();
    // On stdout before the listening line, so it is there once we serve.
    std::printf("pdserve-decode metrics on %s:%d\n", ListenHost(listen).c_str(),
                metrics_server->port());
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  GrpcServerOptions server_options;
  server_options.listen = absl::GetFlag(FLAGS_listen);
  server_options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  server_options.more_services.push_back(inspect->get());
  int port = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> server =
      StartGrpcServer(server_options, &service, &port);
  if (!server.ok()) {
    LOG(ERROR) << server.status().message();
    return 1;
  }
  (*server)->GetHealthCheckService()->SetServingStatus(true);

  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    absl::Status written = WritePortFile(port_file, port);
    if (!written.ok()) {
      LOG(ERROR) << written.message();
      (*server)->Shutdown();
      return 1;
    }
  }
  // printf rather than std::cout: no copy relocation of std::cout in the
  // binary, which the deep-bound SentencePiece module would not see.
  std::printf("pdserve-decode listening on %s:%d\n", ListenHost(server_options.listen).c_str(),
              port);
  std::fflush(stdout);

  const int signal_number = stop_signals.Wait();
  LOG(INFO) << "signal " << signal_number << ": shutting down";
  (*server)->GetHealthCheckService()->Shutdown();  // NOT_SERVING from now on
  // Requests not yet generating end now with UNAVAILABLE (their callers can
  // retry elsewhere at once); the generating ones get the grace period.
  engine.Drain();
  // In-flight streams get the grace period (the engine keeps serving them),
  // then gRPC cancels the rest, which the engine ends at once.
  (*server)->Shutdown(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_shutdown_grace)));
  engine.Shutdown();
  (*server)->Wait();
  LOG(INFO) << "stopped";
  return 0;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  // Before any allocation worth keeping and any thread: malloc settings for
  // the KV stream's large message buffers (why: shared/allocator_tuning.h).
  const bool allocator_tuned = pdserve::TuneAllocatorForStreaming();
  // Before any thread exists, so every thread inherits the blocked mask.
  const pdserve::StopSignals stop_signals;
  absl::SetProgramUsageMessage(
      "pdserve-decode --model_dir DIR --prefill_target ADDR[,ADDR...] [--listen HOST:PORT]");
  pdserve::ShowMainFlagsInHelp();
  absl::ParseCommandLine(argc, argv);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  if (!allocator_tuned) LOG(WARNING) << "glibc refused the malloc thresholds (mallopt)";
  return pdserve::Run(stop_signals);
}
