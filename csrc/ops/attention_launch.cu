// The paged-attention kernels' one translation unit: torch-free launchers called by attention_cuda.cpp.
#include "kernels/cuda/attention_launch.cuh"
