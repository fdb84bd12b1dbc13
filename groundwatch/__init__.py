"""groundwatch: streaming detection for satellite imagery, with inference inside Redis.

The core package holds what every role shares: settings, key names, wire formats, the single
gateway to the engine's AI.* commands and the `groundwatch` CLI. It imports no role.
"""

__version__ = "0.1.0"
