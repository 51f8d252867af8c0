"""The WSGI entry point for gunicorn: `gunicorn 'ukcancel.wsgi:app'`."""

from ukcancel import logs
from ukcancel.assemble import create_api
from ukcancel.service import gunicorn_errors
from ukcancel.settings import Settings

settings = Settings.from_env()
logs.configure(settings)  # UKCANCEL_LOG_FORMAT; gunicorn keeps its own error and access logs
app = create_api(settings)
gunicorn_errors.install()  # gunicorn's own 400/414/431 answers as problems, like the application's
