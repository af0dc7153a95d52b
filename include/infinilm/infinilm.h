// Umbrella header of the infinilm C++ library: the engine API and checkpoint loading.
#pragma once

#include "infinilm/checkpoint.h"
#include "infinilm/engine.h"
