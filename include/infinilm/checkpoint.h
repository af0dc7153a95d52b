// Loading a HF checkpoint directory (config.json + *.safetensors) into the engine from C++.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "infinilm/engine.h"

namespace infinilm {

// config.json of `model_dir` (or the file itself) -> a validated LlamaConfig. Same rules as the Python
// AutoConfig (infinilm_torch/auto_config.py): model types llama, qwen2, mistral; silu; rope default/linear/llama3.
// Throws c10::ValueError naming the file and the field.
LlamaConfig load_config(const std::string& model_dir);
LlamaConfig config_from_json(const std::string& json_text, const std::string& src = "config.json");

// The tensors of one .safetensors file, in file order, as CPU tensors of the file's dtype (copies).
std::vector<std::pair<std::string, at::Tensor>> read_safetensors(const std::string& path);

// Every *.safetensors of `model_dir` (a sharded index's files when model.safetensors.index.json exists)
// -> engine.load_param. Strict: every parameter the engine has must be present and nothing else (rotary
// inv_freq buffers and a tied model's lm_head.weight are skipped). Names are checked before any tensor loads.
// progress(loaded, total) is called after each tensor when given. Returns the number of tensors loaded.
int64_t load_checkpoint(InferEngine& engine, const std::string& model_dir,
                        const std::function<void(int64_t, int64_t)>& progress = nullptr);

}  // namespace infinilm
