// Memory for the CPU ops' large outputs and per-call buffers, kept for reuse when freed.
//
// glibc's malloc serves a block of 32 MB or more (and, once it has trimmed its heap, smaller
// ones too) by a fresh mmap, which the kernel then faults in page by page as the op first writes
// it, and unmaps it on free: at ConvNeXt's batch-32 inference that is tens of thousands of page
// faults per forward. The ops here take such blocks (kPooledMinBytes or more) from a process-wide
// pool instead: a freed block goes back to the pool, still mapped and faulted in, and a later
// request of the same size takes it. The pool keeps at most its byte limit (CK_CPU_POOL_MB, 1024 by
// default; 0 turns it off) of free blocks, dropping the least recently freed first; release_pool()
// frees them all. Tensors from it are ordinary resizable CPU tensors.
#pragma once
#include <torch/extension.h>

#include <cstddef>
#include <cstdint>
#include <optional>

namespace ck::cpu {

// Blocks below this go to the default CPU allocator (malloc keeps and reuses them itself).
constexpr size_t kPooledMinBytes = size_t{1} << 20;

// at::empty(sizes, options, memory_format) on the CPU with large blocks from the pool; like
// at::empty it fills the tensor with NaN where torch's deterministic mode asks for that.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options,
                        std::optional<at::MemoryFormat> memory_format = std::nullopt);

// at::empty_like(t) (t's strides where it is dense, else its suggested memory format), or in
// memory_format, on the CPU from the pool; other devices: at::empty_like itself.
at::Tensor pooled_empty_like(const at::Tensor& t,
                             std::optional<at::MemoryFormat> memory_format = std::nullopt);

// (bytes of free blocks held, blocks held, blocks served from the pool since the start).
std::tuple<int64_t, int64_t, int64_t> pool_stats();

// Frees every block the pool holds; returns the bytes freed.
int64_t release_pool();

}  // namespace ck::cpu
