"""The WSGI entry point for gunicorn: `gunicorn 'ukcancel.wsgi:app'`."""

from ukcancel.assemble import create_api

app = create_api()
