"""Foundations: errors, the event stream, sync/async bridging, text helpers, lazy imports. Imports
nothing else of nbagent.
"""
