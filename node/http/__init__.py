"""The node's HTTP face: dashboard, health probes, Prometheus metrics and DICOMweb STOW-RS.

One Starlette application served by uvicorn on a thread of the node process (``[http] port``);
every page and endpoint reads the same database and store as the DICOM side:

- :mod:`node.http.app`: the application, bearer-token authentication, the server thread;
- :mod:`node.http.health`: ``/healthz`` (liveness) and ``/readyz`` (readiness);
- :mod:`node.http.metrics`: ``/metrics``, read from the database at scrape time;
- :mod:`node.http.dashboard` with :mod:`node.http.findings` and the Jinja2 ``templates/``;
- :mod:`node.http.stow`: STOW-RS receive (PS3.18 10.5) into the durable receive path;
- :mod:`node.http.dicomweb_sender`: STOW-RS delivery to a DICOMweb destination.
"""
