#!/usr/bin/env bash
# Device diagnostics for the C++-exception segfault seen in CUDA builds: toolchain, unwind tables, probes.
set -uo pipefail
SO=$(ls infinilm_torch/lib/_infinilm*.so)
echo "== toolchain: CC=${CC:-} CXX=${CXX:-}"; /opt/gcc/bin/gcc --version | head -1; /usr/bin/gcc --version 2>&1 | head -1
python -c "import torch; print('torch built with', torch.__config__.show().split('GCC')[1].split()[0] if 'GCC' in torch.__config__.show() else '?')"
readelf -lW "$SO" | grep -i eh_frame; readelf -SW "$SO" | grep -iE "eh_frame|sframe|gcc_except" | awk '{print $2, $3, $6}'
ldd "$SO" | grep -E "gcc_s|stdc\+\+"
ls /opt/gcc/lib64/libgcc_s.so* /opt/gcc/lib64/libstdc++.so* 2>/dev/null
probe() {  # name, python snippet
  timeout 60 python -c "import torch, infinilm_torch.ops as o
try:
    $2
    print('no exception')
except Exception as e:
    print(type(e).__name__, str(e).splitlines()[0][:80])" > /tmp/probe.txt 2>&1
  echo "probe $1: rc=$? $(tail -1 /tmp/probe.txt)"
}
probe torch-native "torch.ones(3) + torch.ones(4)"
probe cpu-op "o.rms_norm(torch.randn(4, 16), torch.ones(8), 1e-6)"
probe cuda-op "o.rms_norm(torch.randn(4, 16, device='cuda'), torch.ones(8, device='cuda'), 1e-6)"
for lib in /opt/gcc/lib64/libgcc_s.so.1; do
  [ -e "$lib" ] || continue
  LD_PRELOAD=$lib probe "cpu-op+preload" "o.rms_norm(torch.randn(4, 16), torch.ones(8), 1e-6)"
  LD_PRELOAD=$lib probe "cuda-op+preload" "o.rms_norm(torch.randn(4, 16, device='cuda'), torch.ones(8, device='cuda'), 1e-6)"
done
