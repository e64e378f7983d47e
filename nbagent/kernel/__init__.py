"""Kernels: a local ipykernel process or one on a Jupyter gateway, behind one session class."""
