"""Triton kernels of the GLAI ops, one concept per module.

``tiles``: grouped tile order and the shared GEMM main loops (pointers, or tensor descriptors on a persistent
grid). ``bits``: the pattern layout as seen from a
kernel. ``gate``, ``masked_matmul`` and ``weight_grad``: the kernels of docs/design.md section 4. Host code that picks
launch configurations and allocates outputs lives in ``glai_kernels.per_layer_ops`` and ``per_layer_launch``; importing this package needs
Triton.
"""
