"""The guest agent and the wire protocol it shares with the host.

Everything under `lg.guest` runs inside the VM on a minimal Python: standard library only, and nothing
outside this package is imported (the image copies just this directory into the guest).
"""

AGENT_VERSION = "0.1.0"
