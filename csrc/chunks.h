// Long multi-step kernel calls, interruptible by Ctrl-C: the bindings run a call's steps in
// chunks with the GIL released and take it back between chunks for PyErr_CheckSignals, so a
// KeyboardInterrupt stops a call of minutes within about a chunk (~0.2 s) instead of at its end.
// A kernel called this way runs its steps lt_begin <= lt < lt_end and continues from its own
// outputs when lt_begin > 0; its random streams are keyed by the absolute step, so the chunks give
// the numbers of one call bit for bit (tests/test_particles.py, tests/test_mirror_sweeps.py).
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>

namespace symkern::chunks {

namespace py = pybind11;

// Seconds a chunk aims at once the kernel's rate is measured.
constexpr double kChunkSeconds = 0.2;

// Steps of the first chunk for `work_per_step` units of work (a unit ~ a multiply-add or less):
// ~1e7 of them, milliseconds, so a short call is one chunk and a long one is checked early.
inline std::int64_t first_chunk(double work_per_step) {
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(1e7 / std::max(work_per_step, 1.0)));
}

// kernel(lt_begin, lt_end) for consecutive chunks covering [0, steps), with the GIL released;
// between chunks PyErr_CheckSignals (a raised KeyboardInterrupt propagates as
// py::error_already_set) and, unless fixed_chunk > 0 fixes the size, the next chunk's size from
// the last one's rate (at most 4x larger or 2x smaller). steps == 0 is one empty chunk, which
// copies the inputs to the outputs. Called with the GIL held.
template <class Kernel>
void run_in_chunks(std::int64_t steps, std::int64_t first, std::int64_t fixed_chunk,
                   Kernel&& kernel) {
  std::int64_t chunk = fixed_chunk > 0 ? fixed_chunk : std::max<std::int64_t>(first, 1);
  std::int64_t done = 0;
  do {
    const std::int64_t todo = std::min(chunk, steps - done);
    const auto t0 = std::chrono::steady_clock::now();
    {
      py::gil_scoped_release nogil;
      kernel(done, done + todo);
    }
    done += todo;
    if (done < steps) {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (fixed_chunk <= 0) {
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double scale = std::clamp(kChunkSeconds / std::max(secs, 1e-6), 0.5, 4.0);
        chunk = std::max<std::int64_t>(1, std::llround(static_cast<double>(todo) * scale));
      }
    }
  } while (done < steps);
}

}  // namespace symkern::chunks
