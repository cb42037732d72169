"""Measured ceilings of the GPUs the bench cases report fractions of (bench/device_session.sh
``ceilings``: 1 GiB device-to-device copy and 8192³ matmuls, triton.testing.do_bench medians)."""

# NVIDIA H100 80GB HBM3, driver 580.159.04, torch 2.11.0+cu130, 2026-11-22 (one run)
H100_COPY_GBPS = 2994.0  # read + write counted
H100_TF32_TFLOPS = 368.0  # torch matmul with allow_tf32; datasheet dense TF32: 495
H100_FP32_TFLOPS = 52.0  # CUDA cores (no TF32)
H100_BF16_TFLOPS = 672.0

GPU_TARGET_FRACTION_OF_COPY = 0.80  # PERF.md: >= 80 % of HBM copy bandwidth for B·D >= 1e8


def copy_bandwidth_fractions(info: dict) -> dict:
    """From compare()'s timings of a memory-bound op on a GPU: its bandwidth as a fraction of
    the copy floor (same bytes, same device, same run) and of the H100's measured copy rate."""
    import torch

    return {
        "fraction_of_copy_floor_bandwidth": info["copy_floor_ms"] / info["symkern_ms"],
        "fraction_of_h100_measured_copy": info["achieved_GBps"] / H100_COPY_GBPS,
        "h100_measured_copy_GBps": H100_COPY_GBPS,
        "device_name": torch.cuda.get_device_name(),
    }
