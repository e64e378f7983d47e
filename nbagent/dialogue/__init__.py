"""What the model reads and writes: prompts, reply parsing, observations of kernel outputs,
tracebacks, workdir listings. Pure: no kernel, no model client.
"""
