"""The anomaly detectors, one kind of anomaly each (the table is in :mod:`streams.anomaly`).

* :mod:`~streams.anomaly.detectors.base`: what a detector is, and the alert lifecycle all
  of them share;
* :mod:`~streams.anomaly.detectors.spike`: spend far above a scope's own seasonal baseline;
* :mod:`~streams.anomaly.detectors.runaway`: an agent, session or trace that loops;
* :mod:`~streams.anomaly.detectors.calendar`: the detectors that judge whole UTC days or ISO
  weeks: cost-per-call drift, non-production traffic billed to production, unpriced models.
"""
