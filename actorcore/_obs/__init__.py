"""Observability of a node: task history, state queries, metrics, dashboard, timeline.

Sans-IO parts (:mod:`._history`, :mod:`._query`) hold and answer state; the
node daemon owns one :class:`NodeObserver` (:mod:`._observer`) that feeds them
and serves ``/metrics`` and the dashboard. Every per-node query is one
function, :func:`._query.node_rows`, so a cluster can ask each node and merge
the answers with :func:`._query.merge_rows`.
"""
