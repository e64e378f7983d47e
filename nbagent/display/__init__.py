"""Displays of the event stream without widgets: the RunLog fold, HTML, the terminal view,
sanitising.
"""
