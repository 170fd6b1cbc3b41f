"""The engine every front end drives: the schedule, the collector, the probes, the dashboard
writer and the diagnosis of one run, fed by a handful of training events.

``LayerDiagnostics`` (Lightning), ``attach()`` (a plain loop or Lightning Fabric) translate their
framework's events into :class:`~ln_diagnostics.engine.engine.Engine` calls, so the three give
the same tags and values for the same model.
"""
