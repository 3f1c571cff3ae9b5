// SIGINT / SIGTERM handling for the service binaries without signal handlers:
// the signals are blocked in every thread and one thread waits for them.
#ifndef PDSERVE_SHARED_STOP_SIGNALS_H_
#define PDSERVE_SHARED_STOP_SIGNALS_H_

#include <signal.h>

namespace pdserve {

// Construct first thing in main(), before any thread exists (gRPC, BLAS,
// logging): threads inherit the blocked mask, so the stop signals stay
// pending until Wait() takes them, and no thread is interrupted mid-call.
class StopSignals {
 public:
  StopSignals();  // blocks SIGINT and SIGTERM in the calling thread
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // Blocks until SIGINT or SIGTERM arrives; returns the signal number.
  int Wait() const;

 private:
  sigset_t signals_;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_STOP_SIGNALS_H_
