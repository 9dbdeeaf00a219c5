"""Inference: the mesh's models on Triton (PyTriton here, a Triton deployment on GPU nodes in production).

Clients speak Triton's own KServe-v2 protocol, so a client in any language already has one.
"""
