"""Applications: the nbagent CLI, batch, eval, the runner they share, the demo, terminal approval,
host protection.
"""
