"""Worker supervision, the systemd watchdog, the health gate and the agent unit.

* :mod:`appliance.supervisor.supervisor` -- :class:`Supervisor`: worker process, heartbeats,
  backoff, fallback/degraded modes, WATCHDOG=1 only while healthy;
* :mod:`appliance.supervisor.sdnotify` -- sd_notify over ``$NOTIFY_SOCKET``;
* :mod:`appliance.supervisor.health` -- health check and the commit/rollback gate;
* :mod:`appliance.supervisor.pipeline_worker` -- the real inference pipeline as a worker;
* :mod:`appliance.supervisor.unit` -- ``edgekiln-agent.service``.
"""
