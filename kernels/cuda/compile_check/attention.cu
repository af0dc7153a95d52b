// Compile-only check of the torch-free paged-attention kernels and launchers for sm_90.
#include "../attention_launch.cuh"
