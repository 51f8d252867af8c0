"""The worker side: the Celery app, its tasks and the UKSSDC client (the fleet gate is in the core, `ukcancel.fleet`)."""
