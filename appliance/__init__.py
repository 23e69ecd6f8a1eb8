"""edgekiln device runtime: everything frozen into the appliance image.

``import appliance`` needs only the core dependencies; back ends and optional roles import
their libraries lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"
