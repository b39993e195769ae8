"""Node configuration: one TOML file, every key with a default.

The embedded defaults are what ``make serve`` runs with (SQLite inside ``data_dir``, AE title
``CXRNODE`` on port 11112, the shipped models). A TOML file overrides any of them; unknown keys
are an error naming the key, so a typo never silently falls back to a default.

Paths: a relative path in a configuration file (``data_dir``, ``models_dir``, any file path) is
relative to the folder of that file, so ``cxr-node serve --config /etc/cxr-node/node.toml`` means
the same thing from any working directory. Without a file, ``data_dir`` ("var") is relative to
the working directory. An empty ``models_dir`` (the default) is the ``models/`` folder shipped
with the installed code (:func:`shipped_models_dir`), wherever the command runs.

Layout of the file::

    [node]        listener, storage, durability, limits
    [pipeline]    models_dir, device, result series settings
    [worker]      lease, retries, polling
    [delivery]    retries and backoff
    [http]        dashboard, health probes, metrics, DICOMweb STOW-RS (node.http)
    [[destinations]]  where results go (several allowed; tls = true for DICOM TLS)
    [[peers]]     (AE title, host) pairs allowed to associate (node.peers)
    [audit]       the audit trail (node.audit)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from node.errors import ConfigError
from node.peers import PeerTable

DURABILITY_MODES = ("fsync", "os")
# listener_processes = 0: one per CPU up to this many (each costs about 95 MB; two were measured to
# reach the bare SCP's rate on two cores, bench/README.md)
AUTO_LISTENER_PROCESSES = 4


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity where the system has one (Linux: a container's
    cpuset), else every CPU."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def shipped_models_dir() -> Path:
    """The ``models/`` folder beside the installed ``node`` package (the project root).

    The package is installed in editable mode (uv), so ``node/__init__.py`` lives in the checkout
    (or in the image's /app) and the bundles are its sibling ``models/``.
    """
    import node

    return Path(node.__file__).resolve().parents[1] / "models"


DEFAULTS_SOURCE = "<defaults>"  # NodeConfig.source without a file: paths relative to the cwd


@dataclass
class Destination:
    """A DICOM peer that receives every result object by C-STORE (PS3.4 Annex B)."""

    name: str = "pacs"
    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242
    type: str = "dicom"  # the sender registry key (node.delivery.SENDERS)
    # C-STORE: transfer syntaxes to propose first, best first, as UIDs or pydicom keywords:
    # ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless, JPEGLSLossless
    # (node.results.encoding.SUPPORTED). Explicit and Implicit VR Little Endian are always proposed
    # after them; empty: each object's stored syntax, then those two (node.delivery).
    transfer_syntaxes: list[str] = field(default_factory=list)
    # type = "dicomweb": STOW-RS (PS3.18 10.5) to the DICOMweb base ``url`` (e.g. Orthanc's
    # http://host:8042/dicom-web), HTTP basic auth with username/password or a bearer token.
    url: str = ""
    username: str = ""
    password: str = ""
    token: str = ""
    # DICOM TLS (PS3.15 B.9, node.tls): the server certificate is verified against
    # tls_ca_certificates (empty: the system store), host name included; tls_certificate and
    # tls_private_key (both or neither) are presented when the peer asks for a client certificate.
    tls: bool = False
    tls_ca_certificates: str = ""
    tls_certificate: str = ""
    tls_private_key: str = ""


@dataclass
class PeerSettings:
    """One ``[[peers]]`` entry: this Calling AE Title may associate from this host (node.peers)."""

    ae_title: str = ""
    host: str = ""  # an IP address, a CIDR range or a host name


@dataclass
class AuditSettings:
    """The audit trail (node.audit): JSON lines, optionally syslog as well."""

    enabled: bool = True
    path: str = ""  # empty: <data_dir>/audit/audit.jsonl
    syslog_address: str = ""  # "" off; "/dev/log", "udp://host:514" or "tcp://host:514"
    syslog_facility: str = "authpriv"


@dataclass
class NodeSettings:
    ae_title: str = "CXRNODE"
    host: str = "0.0.0.0"  # listen address; tests use 127.0.0.1
    port: int = 11112
    data_dir: str = "var"  # instances, results, database
    database_url: str = ""  # empty: sqlite file inside data_dir
    database_schema: str = ""  # PostgreSQL only: a schema of our own (created if missing)
    study_stable_seconds: float = 10.0
    allowed_calling_aets: list[str] = field(default_factory=list)  # empty: any calling AE
    max_associations: int = 16
    # Connections open at once from one remote address (node.scp_transport): half-open sockets from
    # one host cannot take every association slot. Keep it below max_associations.
    max_associations_per_host: int = 8
    # Maximum P-DATA-TF PDU length the listener advertises (PS3.8 D.1) and accepts; bounds the
    # memory a peer can make an association hold. 0 = unlimited (not recommended).
    max_pdu_bytes: int = 1048576
    # "fsync": file fsync + directory fsync + SQLite synchronous=FULL before the success
    #          status: an acknowledged instance survives a process kill AND a power loss.
    # "os":    written and renamed (page cache) + SQLite synchronous=NORMAL: survives a kill
    #          of the node (SIGKILL, crash) but not a power loss or kernel crash.
    durability: str = "fsync"
    max_instance_bytes: int = 512 * 1024 * 1024
    max_pixels: int = 100_000_000  # rows x columns x frames
    min_free_disk_mb: int = 1024  # refuse new data (0xA700) below this much free space
    # Finished studies (results delivered, nothing pending) leave the node once their newest object is
    # this many days old (node/retention.py); 0 keeps everything. Checked every retention_check_seconds.
    retention_days: float = 0.0
    retention_check_seconds: float = 3600.0
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    commit_batch_max: int = 256  # instances per group commit
    # Processes that accept associations (node.listener_pool): 1 = the serve process itself; more
    # lets concurrent associations use more than one core (pynetdicom's work holds the interpreter
    # lock); the association limits hold for the node as a whole (node.association_slots).
    # 0 = one per CPU the node may run on, at most AUTO_LISTENER_PROCESSES.
    listener_processes: int = 0
    log_level: str = "INFO"
    log_format: str = "text"  # "text" (key=value) or "json"
    # DICOM TLS listener (PS3.15 B.9, node.tls); 2762 is the registered port. With tls_port > 0,
    # port = 0 turns the plain TCP listener off. With tls_ca_certificates set, a peer must present
    # a certificate signed by that bundle (mutual TLS).
    tls_port: int = 0
    tls_certificate: str = ""  # PEM certificate of the node
    tls_private_key: str = ""  # PEM private key (unencrypted; protect the file: mode 0600)
    tls_ca_certificates: str = ""  # PEM bundle of the CAs whose clients may connect


@dataclass
class PipelineSettings:
    models_dir: str = ""  # empty: the models shipped with the installed code (shipped_models_dir())
    device: str = "auto"  # "auto" picks CUDA when available, else CPU
    manufacturer: str = "cxr-node"
    institution_name: str = ""
    # A DICOM View Position (0018,5101) of LL/RL stops the chain even when the projection model says
    # frontal (pipelines.tasks.projection). Off: the model alone decides; a disagreement stays a warning.
    use_view_position: bool = True
    # A Body Part Examined (0018,0015) that names a region without lungs (HAND, KNEE, ABDOMEN, ...;
    # pipelines.body_part) is not analysed. Empty or unknown values are analysed.
    use_body_part: bool = True
    # A frontal call whose lung mask has the shape a lateral gives (one field across the chest;
    # pipelines.lung_field) is not analysed. Off: analysed, with a warning.
    use_lung_field: bool = True


@dataclass
class WorkerSettings:
    workers: int = 1  # in-process worker threads started by `serve` (0: none)
    lease_seconds: float = 60.0  # renewed every third of it while a job runs
    max_attempts: int = 3
    poll_seconds: float = 1.0
    # Models missing or broken at start-up: 0 exits at once with an error naming the folder; > 0 waits
    # for them (the listener stays closed), trying again after this many seconds.
    load_retry_seconds: float = 0.0


@dataclass
class DeliverySettings:
    max_attempts: int = 8
    backoff_seconds: float = 5.0  # first retry delay; doubles each attempt
    backoff_max_seconds: float = 600.0
    poll_seconds: float = 1.0
    batch_size: int = 64


@dataclass
class HttpSettings:
    port: int = 0  # > 0: serve the dashboard, /healthz, /readyz, /metrics and STOW-RS (node.http)
    host: str = "127.0.0.1"
    # When set, every path but /healthz needs "Authorization: Bearer <token>" (401 otherwise).
    token: str = ""


@dataclass
class NodeConfig:
    node: NodeSettings = field(default_factory=NodeSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    destinations: list[Destination] = field(default_factory=list)
    peers: list[PeerSettings] = field(default_factory=list)
    audit: AuditSettings = field(default_factory=AuditSettings)
    source: str = DEFAULTS_SOURCE
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def data_dir(self) -> Path:
        return self.resolve_path(self.node.data_dir)

    @property
    def listener_process_count(self) -> int:
        """How many processes accept associations: ``listener_processes``, or for 0 one per CPU this
        process may run on (its affinity, as a container's cpuset sets it), at most
        AUTO_LISTENER_PROCESSES and never more than connections may be open."""
        wanted = self.node.listener_processes
        if wanted == 0:
            wanted = min(usable_cpus(), AUTO_LISTENER_PROCESSES)
        return max(1, min(wanted, self.node.max_associations))

    @property
    def audit_path(self) -> Path:
        if self.audit.path:
            return self.resolve_path(self.audit.path)
        return self.data_dir / "audit" / "audit.jsonl"

    @property
    def models_dir(self) -> Path:
        if not self.pipeline.models_dir:
            return shipped_models_dir()
        return self.resolve_path(self.pipeline.models_dir)

    def resolve_path(self, value: str | Path) -> Path:
        """A path from the configuration: relative ones are relative to the file's folder (``base_dir``)."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file (None for another database): in ``data_dir`` unless
        ``database_url`` names one."""
        url = self.node.database_url
        if not url:
            return self.data_dir / "cxr-node.sqlite3"
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            return self.resolve_path(url.removeprefix("sqlite:///"))  # the file's folder too
        return None

    @property
    def database_url(self) -> str:
        path = self.sqlite_path
        return f"sqlite:///{path}" if path is not None else self.node.database_url


def _fill(cls: type, table: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known: {sorted(known)}")
    obj = cls()
    for key, value in table.items():
        default = getattr(obj, key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ConfigError(f"{where}.{key} must be {type(default).__name__}, got {value!r}")
        setattr(obj, key, value)
    return obj


def _validate(config: NodeConfig) -> None:
    n = config.node
    if not 0 < n.max_associations_per_host <= n.max_associations:
        raise ConfigError(
            f"[node].max_associations_per_host must be 1..max_associations ({n.max_associations}), "
            f"got {n.max_associations_per_host!r}"
        )
    if not 0 <= n.listener_processes <= 64:
        raise ConfigError(f"[node].listener_processes must be 0 (one per CPU) or 1..64, "
                          f"got {n.listener_processes!r}")
    if n.max_pdu_bytes != 0 and not 4096 <= n.max_pdu_bytes <= 2**31:
        raise ConfigError(f"[node].max_pdu_bytes must be 0 (unlimited) or 4096..2^31, got {n.max_pdu_bytes}")
    if n.durability not in DURABILITY_MODES:
        raise ConfigError(f"[node].durability must be one of {DURABILITY_MODES}, got {n.durability!r}")
    if not 0 < len(n.ae_title.strip()) <= 16:
        raise ConfigError(f"[node].ae_title must be 1-16 characters (PS3.5 AE VR), got {n.ae_title!r}")
    for dest in config.destinations:
        if not 0 < len(dest.ae_title.strip()) <= 16:
            raise ConfigError(f"destination {dest.name!r}: ae_title must be 1-16 characters")
    for dest in config.destinations:
        if dest.type == "dicomweb" and not dest.url.startswith(("http://", "https://")):
            raise ConfigError(f"destination {dest.name!r}: type 'dicomweb' needs url = 'http(s)://...', "
                              f"got {dest.url!r}")
        if dest.token and (dest.username or dest.password):
            raise ConfigError(f"destination {dest.name!r}: give username/password or token, not both")
    if not 0 <= config.http.port <= 65535:
        raise ConfigError(f"[http].port must be 0 (off) or a TCP port, got {config.http.port!r}")
    names = [d.name for d in config.destinations]
    if len(names) != len(set(names)):
        raise ConfigError(f"destination names must be unique, got {names}")
    if n.retention_days < 0 or n.retention_check_seconds <= 0:
        raise ConfigError("[node].retention_days must be >= 0 and [node].retention_check_seconds > 0, got "
                          f"{n.retention_days!r} and {n.retention_check_seconds!r}")
    if config.worker.load_retry_seconds < 0:
        raise ConfigError(f"[worker].load_retry_seconds must be >= 0 (0: exit at once when the models "
                          f"cannot be loaded), got {config.worker.load_retry_seconds!r}")
    if n.log_format not in ("text", "json"):
        raise ConfigError(f"[node].log_format must be 'text' or 'json', got {n.log_format!r}")
    _validate_tls(config)


def _validate_tls(config: NodeConfig) -> None:
    """TLS and [[peers]] settings that can be judged without reading the files (node.tls checks
    those at start-up)."""
    n = config.node
    if not 0 <= n.tls_port <= 65535:
        raise ConfigError(f"[node].tls_port must be 0 (off) or a TCP port, got {n.tls_port!r}")
    if n.tls_port > 0:
        if not (n.tls_certificate and n.tls_private_key):
            raise ConfigError("[node].tls_port is set: [node].tls_certificate and [node].tls_private_key "
                              "must name the node's PEM certificate and key")
        if n.tls_port == n.port:
            raise ConfigError(f"[node].tls_port and [node].port must differ, both are {n.port}")
    for dest in config.destinations:
        if bool(dest.tls_certificate) != bool(dest.tls_private_key):
            raise ConfigError(f"destination {dest.name!r}: tls_certificate and tls_private_key go together")
        if not dest.tls and (dest.tls_ca_certificates or dest.tls_certificate):
            raise ConfigError(f"destination {dest.name!r}: TLS files are set but tls = false")
    PeerTable([(p.ae_title, p.host) for p in config.peers])  # raises ConfigError naming the entry


def _array(data: dict[str, Any], name: str, source: str) -> list[dict[str, Any]]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{source}: {name} must be an array of tables ([[{name}]])")
    return value


def parse_config(data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None) -> NodeConfig:
    """Build a NodeConfig from parsed TOML, rejecting unknown keys and wrong types."""
    top = {"node", "pipeline", "worker", "delivery", "http", "destinations", "peers", "audit"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ConfigError(f"unknown table(s) {unknown} in {source}; known: {sorted(top)}")
    dests = data.get("destinations", [])
    if not isinstance(dests, list):
        raise ConfigError(f"{source}: destinations must be an array of tables ([[destinations]])")
    config = NodeConfig(
        node=_fill(NodeSettings, data.get("node", {}), "[node]"),
        pipeline=_fill(PipelineSettings, data.get("pipeline", {}), "[pipeline]"),
        worker=_fill(WorkerSettings, data.get("worker", {}), "[worker]"),
        delivery=_fill(DeliverySettings, data.get("delivery", {}), "[delivery]"),
        http=_fill(HttpSettings, data.get("http", {}), "[http]"),
        destinations=[_fill(Destination, d, f"[[destinations]] #{i + 1}") for i, d in enumerate(dests)],
        peers=[_fill(PeerSettings, p, f"[[peers]] #{i + 1}")
               for i, p in enumerate(_array(data, "peers", source))],
        audit=_fill(AuditSettings, data.get("audit", {}), "[audit]"),
        source=source,
        base_dir=base_dir or Path.cwd(),
    )
    _validate(config)
    return config


def load_config(path: Path | str | None) -> NodeConfig:
    """Read the TOML file at ``path`` (None: embedded defaults, ``data_dir`` relative to the cwd).

    Relative paths in the file (data_dir, models_dir, any other file) are resolved against the
    folder that holds the file, so the same file means the same folders from any working directory.
    """
    if path is None:
        return parse_config({}, DEFAULTS_SOURCE)
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, str(path), base_dir=path.resolve().parent)
