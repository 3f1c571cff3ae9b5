// Keeps gRPC's shared callback completion queue alive for the whole process.
#ifndef PDSERVE_PROTO_GRPC_SUPPORT_CALLBACK_CQ_PIN_H_
#define PDSERVE_PROTO_GRPC_SUPPORT_CALLBACK_CQ_PIN_H_

namespace pdserve {

// Call before creating a channel used with gRPC's callback API (reactors).
// Idempotent and thread-safe.
//
// Why: Debian's gRPC 1.51 runs callback-API client calls on a process-wide
// "CallbackAlternativeCQ" whose polling threads start at its first reference
// (a channel's first callback call) and are joined at its last release (the
// channel's destruction). A reactor's completion that drops the last
// reference to its channel (its ClientContext holds one) releases the queue
// on one of those very threads, which cannot join itself: the queue is freed
// under a running thread and the process aborts later ("assertion failed:
// prior > 0" in grpc_cq_internal_unref; see grpc/grpc pull request 32584).
// One channel that has made a callback call and is never destroyed keeps the
// count above zero, so the queue is never torn down while the process runs.
void PinCallbackCompletionQueue();

}  // namespace pdserve

#endif  // PDSERVE_PROTO_GRPC_SUPPORT_CALLBACK_CQ_PIN_H_
