#include "output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <ATen/native/TensorFactories.h>

#include <pthread.h>

#include <cstdlib>
#include <list>
#include <mutex>
#include <string>

namespace ck::cpu {
namespace {

constexpr size_t kPage = 4096;  // block sizes are whole pages (also a multiple of c10's 64 B)
constexpr int64_t kDefaultLimitMb = 1024;

struct Block {
  void* ptr;
  size_t bytes;
};

size_t limit_from_env() {
  const char* env = std::getenv("CK_CPU_POOL_MB");
  int64_t mb = kDefaultLimitMb;
  if (env != nullptr && *env != '\0') {
    try {
      mb = std::stoll(env);
    } catch (const std::exception&) {
      TORCH_CHECK_VALUE(false, "CK_CPU_POOL_MB must be a whole number of MB, got '", env, "'");
    }
    TORCH_CHECK_VALUE(mb >= 0, "CK_CPU_POOL_MB must be >= 0, got ", mb);
  }
  return static_cast<size_t>(mb) << 20;
}

class OutputPool final : public c10::Allocator {
 public:
  OutputPool() : limit_(limit_from_env()) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kPooledMinBytes || limit_ == 0) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kPage - 1) / kPage * kPage;
    void* ptr = take(bytes);
    if (ptr == nullptr) ptr = std::aligned_alloc(kPage, bytes);
    if (ptr == nullptr) {  // what the pool holds may be what is missing
      release();
      ptr = std::aligned_alloc(kPage, bytes);
    }
    TORCH_CHECK(ptr != nullptr, "convnext_kernels: out of CPU memory allocating ", bytes, " bytes");
    return {ptr, new Block{ptr, bytes}, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  std::tuple<int64_t, int64_t, int64_t> stats() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(held_), static_cast<int64_t>(free_.size()), reused_};
  }

  int64_t release() {
    std::list<Block> dropped;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      dropped.swap(free_);
      held_ = 0;
    }
    int64_t bytes = 0;
    for (const Block& block : dropped) {
      std::free(block.ptr);
      bytes += static_cast<int64_t>(block.bytes);
    }
    return bytes;
  }

 private:
  static void give_back(void* context);

  // A free block of exactly `bytes` (the most recently freed), or null.
  void* take(size_t bytes) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->bytes == bytes) {
        void* ptr = it->ptr;
        free_.erase(it);
        held_ -= bytes;
        ++reused_;
        return ptr;
      }
    }
    return nullptr;
  }

  void put(const Block& block) {
    if (block.bytes > limit_) return std::free(block.ptr);
    std::list<Block> dropped;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      free_.push_front(block);
      held_ += block.bytes;
      while (held_ > limit_) {  // the least recently freed first
        held_ -= free_.back().bytes;
        dropped.splice(dropped.end(), free_, std::prev(free_.end()));
      }
    }
    for (const Block& b : dropped) std::free(b.ptr);
  }

  friend OutputPool& pool();
  std::mutex mutex_;
  std::list<Block> free_;  // most recently freed first
  size_t held_ = 0;
  const size_t limit_;
  int64_t reused_ = 0;
};

// Never destroyed: tensors freed during interpreter shutdown still return their blocks to it.
// fork() (a DataLoader worker, say) happens with the lock held by the forking thread, so that no
// other thread is inside the pool then: a child forked while another thread held it would wait
// on it forever, or find the free list half changed.
OutputPool& pool() {
  static OutputPool* const instance = [] {
    OutputPool* created = new OutputPool();
    pthread_atfork([] { pool().mutex_.lock(); }, [] { pool().mutex_.unlock(); },
                   [] { pool().mutex_.unlock(); });
    return created;
  }();
  return *instance;
}

void OutputPool::give_back(void* context) {
  const Block* block = static_cast<Block*>(context);
  pool().put(*block);
  delete block;
}

constexpr c10::DispatchKeySet kCpuKeys(c10::DispatchKey::CPU);

at::Tensor filled_if_deterministic(at::Tensor t) {
  // as at::empty does: NaN in every element where torch asks for uninitialised memory filled
  if (C10_UNLIKELY(at::globalContext().deterministicAlgorithms() &&
                   at::globalContext().deterministicFillUninitializedMemory())) {
    at::native::fill_empty_deterministic_(t);
  }
  return t;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options,
                        std::optional<at::MemoryFormat> memory_format) {
  if (options.device().type() != c10::DeviceType::CPU) {
    return at::empty(sizes, options.memory_format(memory_format));
  }
  return filled_if_deterministic(at::detail::empty_generic(
      sizes, &pool(), kCpuKeys, c10::typeMetaToScalarType(options.dtype()), memory_format));
}

at::Tensor pooled_empty_like(const at::Tensor& t, std::optional<at::MemoryFormat> memory_format) {
  if (!t.device().is_cpu()) return at::empty_like(t, t.options(), memory_format);
  if (memory_format.has_value()) return pooled_empty(t.sizes(), t.options(), memory_format);
  if (t.is_non_overlapping_and_dense()) {
    return filled_if_deterministic(at::detail::empty_strided_generic(
        t.sizes(), t.strides(), &pool(), kCpuKeys, t.scalar_type()));
  }
  return pooled_empty(t.sizes(), t.options(), t.suggest_memory_format());
}

std::tuple<int64_t, int64_t, int64_t> pool_stats() { return pool().stats(); }

int64_t release_pool() { return pool().release(); }

}  // namespace ck::cpu
