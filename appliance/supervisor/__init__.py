"""Worker supervision, the systemd watchdog, and the health gate.

* :mod:`appliance.supervisor.supervisor` -- :class:`Supervisor`: worker process, heartbeats,
  backoff, fallback/degraded modes, WATCHDOG=1 only while healthy;
* :mod:`appliance.supervisor.sdnotify` -- sd_notify over ``$NOTIFY_SOCKET``;
* :mod:`appliance.supervisor.health` -- health check and the commit/rollback gate;
* :mod:`appliance.supervisor.pipeline_worker` -- the real inference pipeline as a worker.

The systemd unit lives with the image:
``image/build/overlay/etc/systemd/system/edgekiln-agent.service.in``.
"""
