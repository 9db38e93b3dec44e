"""The ``sections`` command: its app and commands, shared options and start-up order, what it
prints (console, progress bars), and how Ctrl-C/SIGTERM stop a run.
"""
