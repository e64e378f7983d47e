"""Records of runs: the .ipynb transcript, replaying it, resuming a conversation from it."""
