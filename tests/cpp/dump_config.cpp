// Test helper: prints the LlamaConfig that the C++ loader reads from a config.json, one "field=value" per line
// (tests/test_cpp_library.py compares it with the Python AutoConfig); errors go to stderr with exit code 1.
#include <infinilm/checkpoint.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " CONFIG_JSON_OR_DIR\n";
    return 2;
  }
  try {
    const infinilm::LlamaConfig c = infinilm::load_config(argv[1]);
    auto ids = [](const std::vector<int64_t>& v) {
      std::string s;
      for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
      return s;
    };
    std::cout.precision(17);
    std::cout << "model_type=" << c.model_type << "\nvocab_size=" << c.vocab_size << "\nhidden_size=" << c.hidden_size
              << "\nintermediate_size=" << c.intermediate_size << "\nnum_hidden_layers=" << c.num_hidden_layers
              << "\nnum_attention_heads=" << c.num_attention_heads << "\nnum_key_value_heads=" << c.num_key_value_heads
              << "\nhead_dim=" << c.head_dim << "\nmax_position_embeddings=" << c.max_position_embeddings
              << "\nrms_norm_eps=" << c.rms_norm_eps << "\nattention_bias=" << c.attention_bias
              << "\nmlp_bias=" << c.mlp_bias << "\ntie_word_embeddings=" << c.tie_word_embeddings
              << "\neos_token_id=" << ids(c.eos_token_id) << "\nbos_token_id=" << ids(c.bos_token_id)
              << "\ndtype=" << c.dtype << "\nrope_theta=" << c.rope_theta << "\nrope_type=" << c.rope_type
              << "\nrope_factor=" << c.rope_factor << "\nrope_low_freq_factor=" << c.rope_low_freq_factor
              << "\nrope_high_freq_factor=" << c.rope_high_freq_factor
              << "\nrope_original_max_position_embeddings=" << c.rope_original_max_position_embeddings
              << "\nsliding_window=" << c.sliding_window << "\n";
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}
