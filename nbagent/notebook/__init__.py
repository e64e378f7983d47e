"""The notebook front end: %agent magics, the ipywidgets panel, clicks; the only importers of
IPython and ipywidgets.
"""
