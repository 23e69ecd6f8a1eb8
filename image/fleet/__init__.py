"""``kiln fleet``: device telemetry from MQTT into SQLite (default) or PostgreSQL.

Modules: ``store`` (the schema, idempotent inserts), ``ingest`` (MQTT 5 shared subscription),
``metrics`` (Prometheus), ``inventory``, ``peers`` (peer anomaly), ``gates`` (rollout stage
verdicts), ``report`` (the offline HTML page), ``cli``. See README.md.
"""
