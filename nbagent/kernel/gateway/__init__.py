"""The Jupyter Kernel Gateway backend: REST for kernel lifetime, a websocket for messages."""
