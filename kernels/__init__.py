"""Kernel sources, installed as `udon_fast.kernels`: Triton kernels (Python) and native C++ (native/)."""
