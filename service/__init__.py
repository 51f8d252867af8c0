"""The HTTP API: an application factory and one blueprint per resource."""
