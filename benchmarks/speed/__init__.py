"""Measured parts of the speed benchmarks, shared by ``benchmarks/engine_speed.py`` (CPU or one device,
fp32) and ``benchmarks/gpu_check.py`` (CUDA, fp32 / fp16 / bf16, plus the service on the GPU).

* ``fixtures`` — the models (an SD-1.x-sized AutoencoderKL with random weights), the test image, layouts;
* ``loops``    — the timed loops (bare forward + input-gradient backward, the naive reference loop) and
  the interleaved timing rounds with their summary;
* ``memory``   — peak-memory workers, one fresh subprocess per model;
* ``cuda``     — the engine on CUDA at each dtype and batch (``gpu_check.py --part engine``);
* ``service_gpu`` — ``/v1/protect`` throughput with micro-batching on the GPU (``gpu_check.py --part service``).
"""
