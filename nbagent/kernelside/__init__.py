"""Kernel-side source: code sent into the agent's kernel as text (prelude, tool stubs); no nbagent
imports at run time there.
"""
