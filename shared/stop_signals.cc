#include "shared/stop_signals.h"

#include <pthread.h>

namespace pdserve {

StopSignals::StopSignals() {
  sigemptyset(&signals_);
  sigaddset(&signals_, SIGINT);
  sigaddset(&signals_, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
}

int StopSignals::Wait() const {
  int signal_number = 0;
  // sigwait only fails for an invalid set; retry on anything unexpected.
  while (sigwait(&signals_, &signal_number) != 0) {
  }
  return signal_number;
}

}  // namespace pdserve
