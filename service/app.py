"""The HTTP API's application factory, around a runtime the assembly (`ukcancel.assemble`) built."""

from __future__ import annotations

import logging

import redis
from flask import Flask
from werkzeug.exceptions import Forbidden, InternalServerError, ServiceUnavailable

from ukcancel import __version__, presence
from ukcancel.quota import QuotaExceeded
from ukcancel.runtime import Runtime
from ukcancel.service import batches, cancellations, console, docs, health, http_metrics, jobs, request_log
from ukcancel.service.auth import SECURITY_SCHEME
from ukcancel.service.current import attach_runtime
from ukcancel.service.long_polls import install_long_poll_cap
from ukcancel.service.openapi import DocumentPlugin
from ukcancel.service.problems import ProblemApi, problem_response
from ukcancel.service.rate_limit import install_rate_limit
from ukcancel.token import NotPermitted

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


def create_app(runtime: Runtime) -> Flask:
    """The API around `runtime` (see `ukcancel.assemble.create_api` for one built from settings)."""
    app = Flask("ukcancel")
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        API_TITLE="ukssdc-cancel",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "info": {"description": "Cancel UKSSDC XRT product jobs through a queue; results as cancelProducts() tuples."},
            "security": [{"bearerAuth": []}],
        },
        **docs.CONFIG,
    )
    app.json.sort_keys = False  # keep the tuple's products in the order the UKSSDC lists them
    attach_runtime(app, runtime)
    # This API process's presence (version, settings that must agree), at most every heartbeat.
    app.extensions["ukcancel_presence"] = beat = presence.Publisher(runtime.connection, presence.API, runtime.settings)
    app.before_request(lambda: beat.beat())
    http_metrics.count_requests(app)
    request_log.install(app)
    install_rate_limit(app, runtime)
    install_long_poll_cap(app)
    api = ProblemApi(app, spec_kwargs={"marshmallow_plugin": DocumentPlugin()})
    api.spec.components.security_scheme("bearerAuth", SECURITY_SCHEME)
    for blueprint in (cancellations.blp, batches.blp, jobs.jobs_blp, jobs.plans_blp, http_metrics.blp):
        api.register_blueprint(blueprint)
    # Probes stay open: they declare no security requirement in the OpenAPI document.
    api.register_blueprint(health.blp)
    console.install_console(app, runtime.settings.console_secret,
                            insecure_cookie=runtime.settings.console_insecure_cookie,
                            session_seconds=runtime.settings.console_session_seconds)  # not in the OpenAPI document
    app.register_blueprint(docs.assets)  # static files only: not part of the API document
    for path in ("/healthz", "/readyz"):
        for operation in api.spec._paths.get(path, {}).values():
            operation["security"] = []

    @app.errorhandler(NotPermitted)
    def not_permitted(exc: NotPermitted):  # type: ignore[no-untyped-def]
        return api.handle_http_exception(Forbidden(str(exc)))

    @app.errorhandler(QuotaExceeded)
    def quota_exceeded(exc: QuotaExceeded):  # type: ignore[no-untyped-def]
        return problem_response(429, "Too Many Requests", exc.detail, {"Retry-After": "60"},
                                limit=exc.limit, setting=exc.setting, allowed=exc.allowed, current=exc.current)

    @app.errorhandler(redis.RedisError)
    def redis_unavailable(exc: redis.RedisError):  # type: ignore[no-untyped-def]
        log.warning("Redis error answering a request: %s", exc)
        return api.handle_http_exception(ServiceUnavailable("The service's store (Redis) is unavailable."))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        from werkzeug.exceptions import HTTPException

        if isinstance(exc, HTTPException):
            return api.handle_http_exception(exc)
        log.exception("unhandled error")
        return api.handle_http_exception(InternalServerError("An internal error occurred; it has been logged."))

    return app
