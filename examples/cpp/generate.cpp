// Greedy generation from token ids with the C++ engine alone (LibTorch, no Python):
//   infinilm_generate MODEL_DIR 1,2,3 [--max-new-tokens N] [--cache static|paged] [--device cpu|cuda]
// Prints the generated ids (one line, comma-separated) and, on stderr, tokens/s.
#include <infinilm/infinilm.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<int64_t> parse_ids(const std::string& s) {
  std::vector<int64_t> ids;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) ids.push_back(std::stoll(item));
  }
  return ids;
}

int usage(const char* argv0) {
  std::cerr << "usage: " << argv0 << " MODEL_DIR IDS [--max-new-tokens N] [--cache static|paged] [--device cpu|cuda]\n"
            << "  IDS: prompt token ids, comma-separated (e.g. 1,2,3)\n";
  return 2;
}

at::Tensor i64(const std::vector<int64_t>& v) { return at::tensor(v, at::kLong); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage(argv[0]);
  const std::string model_dir = argv[1];
  std::vector<int64_t> prompt;
  int64_t max_new = 16;
  std::string cache = "static", device = "cpu";
  try {
    prompt = parse_ids(argv[2]);
    for (int i = 3; i < argc; ++i) {
      const std::string a = argv[i];
      if (i + 1 >= argc) return usage(argv[0]);
      if (a == "--max-new-tokens") max_new = std::stoll(argv[++i]);
      else if (a == "--cache") cache = argv[++i];
      else if (a == "--device") device = argv[++i];
      else return usage(argv[0]);
    }
  } catch (const std::exception&) {
    return usage(argv[0]);
  }
  if (prompt.empty() || max_new < 1 || (cache != "static" && cache != "paged")) return usage(argv[0]);

  try {
    infinilm::LlamaConfig config = infinilm::load_config(model_dir);
    const int64_t len = static_cast<int64_t>(prompt.size()) + max_new;
    constexpr int64_t kBlock = 16;
    const int64_t blocks = (len + kBlock - 1) / kBlock;
    std::shared_ptr<const infinilm::CacheConfig> cc;
    if (cache == "static") {
      cc = std::make_shared<infinilm::StaticKVCacheConfig>(1, len);
    } else {  // room for exactly this request's blocks (the engine's block formula, UPSTREAM.md)
      const int64_t elem = at::elementSize(config.scalar_type());
      cc = std::make_shared<infinilm::PagedKVCacheConfig>(
          blocks * 2 * config.head_dim * config.num_key_value_heads * kBlock * config.num_hidden_layers * elem, kBlock);
    }
    const c10::DeviceType dt = device == "cuda" ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
    infinilm::InferEngine engine(config, infinilm::DistConfig(), dt, cc);
    infinilm::load_checkpoint(engine, model_dir);

    std::vector<int64_t> out;
    std::vector<int64_t> feed = prompt;
    int64_t cached = 0;
    std::vector<int64_t> table(blocks);
    for (int64_t b = 0; b < blocks; ++b) table[b] = b;
    const auto t0 = std::chrono::steady_clock::now();
    auto t_first = t0;
    for (int64_t step = 0; step < max_new; ++step) {
      const auto n = static_cast<int64_t>(feed.size());
      infinilm::Input in;
      in.temperature = 0.0;  // greedy
      if (cache == "static") {
        in.input_ids = i64(feed).view({1, n});
        in.cache_lengths = i64({cached});
      } else {
        std::vector<int64_t> pos(n), slots(n);
        for (int64_t t = 0; t < n; ++t) pos[t] = slots[t] = cached + t;  // blocks 0..: slot == position
        in.input_ids = i64(feed);
        in.position_ids = i64(pos);
        in.cache_lengths = i64({cached});
        in.input_lengths = i64({n});
        in.block_tables = i64(table).view({1, blocks});
        in.slot_mapping = i64(slots);
      }
      const int64_t next = engine.forward(in).output_ids.item<int64_t>();
      if (step == 0) t_first = std::chrono::steady_clock::now();
      out.push_back(next);
      cached += n;
      feed = {next};
    }
    const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double decode = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_first).count();
    for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? "," : "") << out[i];
    std::cout << "\n";
    std::cerr << out.size() << " tokens in " << total << " s; decode "
              << (max_new > 1 && decode > 0 ? (max_new - 1) / decode : 0.0) << " tok/s\n";
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
