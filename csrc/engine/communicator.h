// The engine's name for dist::Communicator (the interface lives below the engine, where models include it).
#pragma once

#include "csrc/dist/communicator.h"

namespace infinilm::engine {
using Communicator = dist::Communicator;
}  // namespace infinilm::engine
