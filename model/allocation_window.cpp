// Bytes allocated by one thread's work, told by torch's allocators themselves.
//
// torch's CPU allocator and CUDA caching allocator report every allocation and free to the
// `MemoryReportingInfoBase` installed as the thread's PROFILER_STATE debug info (the profiler's
// memory view uses the same hook). A window installs one, counts the bytes it saw allocated
// and not yet freed, and keeps their peak. The debug info follows the work into torch's
// intra-op threads, so a window counts its own request's allocations only, whatever else
// runs in the process. Loaded with ctypes by allocation_window.py, which builds it.
#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace {

std::atomic<int64_t> windows_alive{0};

class Window final : public c10::MemoryReportingInfoBase {
 public:
  explicit Window(int device_type)
      : device_type_(device_type),
        // A window opened inside another (or inside the profiler) passes every report on.
        outer_(dynamic_cast<c10::MemoryReportingInfoBase*>(
            c10::ThreadLocalDebugInfo::get(c10::DebugInfoKind::PROFILER_STATE))) {
    ++windows_alive;
  }
  ~Window() override { --windows_alive; }
  Window(const Window&) = delete;
  Window& operator=(const Window&) = delete;

  void reportMemoryUsage(void* ptr, int64_t size, size_t total_allocated,
                         size_t total_reserved, c10::Device device) override {
    if (outer_ != nullptr && outer_->memoryProfilingEnabled()) {
      outer_->reportMemoryUsage(ptr, size, total_allocated, total_reserved, device);
    }
    if (static_cast<int>(device.type()) != device_type_) {
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (size > 0) {
      sizes_[ptr] = size;
      live_ += size;
      peak_ = std::max(peak_, live_);
      return;
    }
    // Frees of blocks allocated before the window opened are not the window's.
    auto it = sizes_.find(ptr);
    if (it != sizes_.end()) {
      live_ -= it->second;
      sizes_.erase(it);
    }
  }

  bool memoryProfilingEnabled() const override { return true; }

  int64_t live() { std::lock_guard<std::mutex> lock(mutex_); return live_; }
  int64_t peak() { std::lock_guard<std::mutex> lock(mutex_); return peak_; }
  void reset_peak() { std::lock_guard<std::mutex> lock(mutex_); peak_ = live_; }

 private:
  const int device_type_;
  c10::MemoryReportingInfoBase* const outer_;
  std::mutex mutex_;
  std::unordered_map<void*, int64_t> sizes_;
  int64_t live_ = 0;
  int64_t peak_ = 0;
};

using Handle = std::shared_ptr<Window>;

Window& window(void* handle) { return **static_cast<Handle*>(handle); }

}  // namespace

extern "C" {

// Opens a window on this thread for allocations on devices of `device_type` (c10::DeviceType:
// 0 CPU, 1 CUDA); returns its handle.
void* qgn_window_open(int device_type) {
  auto* handle = new Handle(std::make_shared<Window>(device_type));
  c10::ThreadLocalDebugInfo::_push(c10::DebugInfoKind::PROFILER_STATE, *handle);
  return handle;
}

// Stops counting. Windows close innermost first on the thread that opened them: anything
// else returns -1 and leaves the window open (and the thread's debug info as it was).
int qgn_window_close(void* handle) {
  auto* mine = static_cast<Handle*>(handle)->get();
  if (c10::ThreadLocalDebugInfo::get(c10::DebugInfoKind::PROFILER_STATE) != mine) {
    return -1;
  }
  try {
    c10::ThreadLocalDebugInfo::_pop(c10::DebugInfoKind::PROFILER_STATE);
  } catch (const std::exception&) {
    return -1;  // another kind of debug info was pushed above it; no exception may cross ctypes
  }
  return 0;
}

void qgn_window_free(void* handle) { delete static_cast<Handle*>(handle); }
int64_t qgn_window_live(void* handle) { return window(handle).live(); }
int64_t qgn_window_peak(void* handle) { return window(handle).peak(); }
void qgn_window_reset_peak(void* handle) { window(handle).reset_peak(); }

// Windows in this process not yet destroyed (open, or closed and not freed): leak tests.
int64_t qgn_windows_alive() { return windows_alive.load(); }

}  // extern "C"
