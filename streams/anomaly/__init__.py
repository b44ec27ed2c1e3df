"""Anomaly detection: spend spikes, runaway agents, cost-per-call drift, non-production
traffic billed to production, and spend the price catalog cannot price.

Budgets catch overspend at a fixed line, often too late. These detectors learn what is
usual for each scope from its own history and say within minutes when something is not:

==================  ===========================================  ==============================
detector            scopes (state key ``<detector>:<scope>``)     alert kind
==================  ===========================================  ==============================
``spike``           ``team=…``, ``feature=…``,                    ``spend_spike``
                    ``provider=…,model=…``
``runaway``         ``agent=…``, ``session=…``, ``trace=…``       ``runaway_agent`` (+ block)
``drift``           ``feature=…``                                 ``cost_per_call_drift``
``non_production``  ``api_key=…``, ``service=…``, ``team=…``      ``non_production_in_production``
``unpriced``        ``provider=…,model=…``                        ``unpriced_model``
==================  ===========================================  ==============================

Everything runs on event time, never the wall clock, so replaying last week decides what
live traffic decided then. All windows are UTC: minutes, hours, days, ISO weeks.

The worker pays per batch, not per event:

1. ``engine.summarize(rows)`` folds a batch of priced rows into a :class:`BatchSummary`:
   per state key and small time bucket, the spend, calls, what drove them and, per agent,
   session or trace, how often each request fingerprint repeated. The fold is columnar:
   each detector declares, as templates over a row's fields and Arrow conditions, which
   scope and driver labels a row counts towards, and a few Arrow group-bys over the whole
   batch do the rest, so Python touches the groups, never the rows.
2. ``engine.process(summary, states)`` takes the stored state of every key in
   ``summary.keys()`` (missing or ``None``: a new key) and returns an :class:`Outcome`: the
   states to write back (``None``: delete), the alerts to publish, the scopes to block or
   unblock. States are JSON-ready dicts (decimals as strings) with bounded ring buffers,
   meant to be stored one value per key in a table with a changelog.
3. ``engine.sweep(states, now)``, every few minutes of event time over all local states,
   resolves alerts of keys that went silent, lifts blocks whose time is up and deletes keys
   idle long enough to have nothing left to say.

An alert is announced once per (kind, scope, window): when it starts firing, when its
severity rises, and once more when it is resolved. Its id is deterministic, the open alert
is part of the state, and ``process(..., position=offset)`` skips a batch the state has
already absorbed, so a replay after a restart neither double counts nor re-announces.

The subpackage, in import order (each module imports only modules before it):

* :mod:`~streams.anomaly.units`: epoch minutes (UTC) and money, shared by everything below;
* :mod:`~streams.anomaly.config`: every detector's knobs, per-scope overrides, the TOML file;
* :mod:`~streams.anomaly.decisions`: what the engine decides (alerts, blocks, an outcome);
* :mod:`~streams.anomaly.contributions`: how a detector declares what a row counts towards;
* :mod:`~streams.anomaly.summaries`: :class:`~streams.anomaly.summaries.BatchSummary` and
  its wire format;
* :mod:`~streams.anomaly.detectors`: the detectors, one kind of anomaly each;
* :mod:`~streams.anomaly.fold`: the Arrow fold of a batch of priced rows into a summary;
* :mod:`~streams.anomaly.engine`: :class:`~streams.anomaly.engine.AnomalyEngine`, the three
  steps above;
* :mod:`~streams.anomaly.state`: the anomaly agent's table and its steps per batch of
  summaries.
"""
