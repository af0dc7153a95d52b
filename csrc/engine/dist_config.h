// DistConfig: which devices the tensor-parallel ranks run on (one rank per listed device id).
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <set>
#include <vector>

namespace infinilm::engine::distributed {

struct DistConfig {
  std::vector<int64_t> tp_device_ids;

  DistConfig() : tp_device_ids{0} {}
  explicit DistConfig(int64_t tp_size) {
    TORCH_CHECK_VALUE(tp_size > 0, "DistConfig: 'tp_size' must be > 0, got ", tp_size);
    for (int64_t i = 0; i < tp_size; ++i) tp_device_ids.push_back(i);
  }
  explicit DistConfig(std::vector<int64_t> ids) : tp_device_ids(std::move(ids)) { validate(); }

  int64_t tp_size() const { return static_cast<int64_t>(tp_device_ids.size()); }

  void validate() const {
    TORCH_CHECK_VALUE(!tp_device_ids.empty(), "DistConfig: 'tp_device_ids' must not be empty");
    std::set<int64_t> seen;
    for (int64_t id : tp_device_ids) {
      TORCH_CHECK_VALUE(id >= 0, "DistConfig: device id ", id, " in 'tp_device_ids' is negative");
      TORCH_CHECK_VALUE(seen.insert(id).second, "DistConfig: device id ", id, " appears twice in 'tp_device_ids'");
    }
  }
};

}  // namespace infinilm::engine::distributed
