// Public C++ API of the engine: InferEngine, its configs, caches, Input/Output and hooks (LibTorch-only builds).
#pragma once

#include "csrc/cache/cache_config.h"
#include "csrc/engine/c10d_communicator.h"
#include "csrc/engine/communicator.h"
#include "csrc/engine/dist_config.h"
#include "csrc/engine/infer_engine.h"
#include "csrc/engine/io.h"
#include "csrc/hooks/hook_registry.h"
#include "csrc/models/llama/config.h"

namespace infinilm {

// The names a C++ program uses; the same classes back the Python module `_infinilm`.
using engine::InferEngine;
using engine::Input;
using engine::Output;
using engine::Communicator;
using engine::C10dCommunicator;        // wraps a c10d::Backend the program built (e.g. ProcessGroupNCCL)
using engine::distributed::DistConfig;
using cache::CacheConfig;
using cache::StaticKVCacheConfig;
using cache::PagedKVCacheConfig;
using models::llama::LlamaConfig;
using models::debug_utils::HookRegistry;
using models::debug_utils::HookCallback;  // std::function<void(const std::string&, const at::Tensor&, int64_t)>

}  // namespace infinilm
