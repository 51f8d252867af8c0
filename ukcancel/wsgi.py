"""The WSGI entry point for gunicorn: `gunicorn 'ukcancel.wsgi:app'`."""

from ukcancel import logs
from ukcancel.assemble import create_api
from ukcancel.layout import ensure_layout_at_start
from ukcancel.service import gunicorn_errors
from ukcancel.settings import Settings

settings = Settings.from_env()
logs.configure(settings)  # UKCANCEL_LOG_FORMAT; gunicorn keeps its own error and access logs
app = create_api(settings)
# The key layout of this release (`ukcancel.layout`): migrated once across the fleet, or the
# process refuses to start (LayoutTooNew names both versions).
ensure_layout_at_start(app.extensions["ukcancel"].connection)
# This process's presence every heartbeat, whether or not it serves requests (gunicorn loads
# this module in each worker, after the fork).
app.extensions["ukcancel_presence"].start_beating()
gunicorn_errors.install()  # gunicorn's own 400/414/431 answers as problems, like the application's
