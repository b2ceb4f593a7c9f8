"""What every tradeplane component shares and none owns: traces (``telemetry``) and the
Prometheus metrics more than one process defines (``metrics``).

It imports no other tradeplane package, so the engine, the gateway (its SDK included)
and the command line can all import it without importing one another.
"""
