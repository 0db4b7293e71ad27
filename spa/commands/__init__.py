"""One module per ``spa`` sub-command: docstring = help, ``add_args``, ``main``."""
