"""Device telemetry: health windows, alerts, prediction drift, and the MQTT uplink with its buffer.

Modules: ``config`` (the ``telemetry`` block of pipeline.json), ``identity`` (device id, site,
target, slot), ``window`` (the per-window aggregator), ``system`` (CPU, temperature, memory,
data partition, uptime), ``drift`` (PSI against ``reference.histogram``), ``uplink``
(:class:`TelemetrySink`), ``setup`` (builds it from a pipeline config), ``mqtt_sink`` /
``mqtt_tls`` / ``telemetry_buffer`` (the broker link, buffered on data). See README.md.
"""
