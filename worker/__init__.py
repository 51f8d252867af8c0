"""The worker side: the Celery app, its tasks, the UKSSDC client and the fleet gate."""
