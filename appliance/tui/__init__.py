"""The technician TUI (``appliance tui``): on-site setup on the device console, fully offline.

Textual is imported only by the modules that draw (``app``, ``base``, ``confirm``, ``screens``);
the data modules beside them (``devstatus``, ``netconfig``, ``camcheck``, ``logsource``,
``demo``) are plain Python and tested on their own. See README.md in this directory.
"""
