"""All tunable constants of raycluster in one place: each declared once, with its default.

Every tunable can be overridden by an environment variable named ``RAYCLUSTER_<NAME>``
(for example ``RAYCLUSTER_RECONCILE_INTERVAL_S=0.5``). Units are part of the names. The same
tunables form one typed object, ``raycluster.settings.Settings`` (made from ``DECLARED``), that
``start_runtime`` hands to every runtime actor, HealthMonitor and rank: each puts it in force in its
own process (``Settings.install``), so the runtime's settings are the ones it was started with, not
whatever environment a node happens to have. Code reads ``C.<NAME>`` at call time, never at import.
"""

from __future__ import annotations

import os
from pathlib import Path


# Every tunable below as (type, default), in declaration order: ``raycluster.settings.Settings`` is
# made from it (one typed field each), so each default and its comment has this one home.
DECLARED: dict[str, tuple[type, object]] = {}


def _env_float(name: str, default: float) -> float:
    DECLARED[name] = (float, float(default))
    raw = os.environ.get(f"RAYCLUSTER_{name}")
    return float(raw) if raw not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    DECLARED[name] = (int, default)
    raw = os.environ.get(f"RAYCLUSTER_{name}")
    return int(raw) if raw not in (None, "") else default


def _env_bool(name: str, default: bool) -> bool:
    DECLARED[name] = (bool, default)
    raw = os.environ.get(f"RAYCLUSTER_{name}")
    if raw in (None, ""):
        return default
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"RAYCLUSTER_{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def _env_str(name: str, default: str, declare: bool = True) -> str:
    if declare:
        DECLARED[name] = (str, default)
    raw = os.environ.get(f"RAYCLUSTER_{name}")
    return raw if raw not in (None, "") else default


# --- naming -------------------------------------------------------------------------------------
NAMESPACE = _env_str("NAMESPACE", "raycluster")
COORDINATOR_NAME = "coordinator"
CHECKPOINT_MANAGER_NAME = "checkpoint_manager"
BUDGET_AUTOSCALER_NAME = "budget_autoscaler"
METRICS_COLLECTOR_NAME = "metrics_collector"
PG_NAME_PREFIX = "rc-"  # placement groups we own are named rc-<job_id>-a<attempt>
# The runtime actors live on the head node (like Ray Serve's controller): worker nodes come and go.
HEAD_NODE_RESOURCE = {"node:__internal_head__": 0.001}


def state_dir() -> Path:
    """Where SQLite databases, checkpoints, tokens and local-cluster records live."""
    return Path(_env_str("STATE_DIR", str(Path.home() / ".raycluster"), declare=False)).expanduser().resolve()


# --- control loop -------------------------------------------------------------------------------
RECONCILE_INTERVAL_S = _env_float("RECONCILE_INTERVAL_S", 1.0)
# Passes woken early (a submit storm, many ranks finishing at once) start at most this often, so a
# burst of wakes is handled by a few passes rather than one per wake.
RECONCILE_MIN_GAP_S = _env_float("RECONCILE_MIN_GAP_S", 0.02)
PLACEMENT_TIMEOUT_S = _env_float("PLACEMENT_TIMEOUT_S", 120.0)
# A placement group just made is looked at this often for its first PLACING_FAST_WINDOW_S (Ray places
# one on a free cluster in tens of milliseconds), and so is the queue after a gang's group is removed
# (Ray's free view shows it a little later), so a gang starts then rather than at the next tick.
PLACING_POLL_S = _env_float("PLACING_POLL_S", 0.05)
PLACING_FAST_WINDOW_S = _env_float("PLACING_FAST_WINDOW_S", 2.0)
# A job whose placement times out this many times fails with cause no_resources (it is queued again
# after each earlier timeout).
MAX_PLACEMENT_TIMEOUTS = _env_int("MAX_PLACEMENT_TIMEOUTS", 3)
# How often the loop removes placement groups named by us that belong to no active attempt.
PG_SWEEP_INTERVAL_S = _env_float("PG_SWEEP_INTERVAL_S", 30.0)
# Recent decisions (Steps) the Coordinator keeps in memory, for inspection and replay.
RECENT_STEPS_KEPT = _env_int("RECENT_STEPS_KEPT", 1000)
# After a rank of an attempt fails with a user error, how long we wait for the other ranks to
# settle before classifying the failure (a peer's socket error comes before Ray reports the node
# that died); a system error is judged at once (policy.recovery.classify).
FAILURE_SETTLE_S = _env_float("FAILURE_SETTLE_S", 20.0)
ENTRYPOINT_CHECK_TIMEOUT_S = _env_float("ENTRYPOINT_CHECK_TIMEOUT_S", 60.0)
ENTRYPOINT_CHECK_CACHE_S = _env_float("ENTRYPOINT_CHECK_CACHE_S", 30.0)
NODE_TOTALS_TTL_S = _env_float("NODE_TOTALS_TTL_S", 2.0)
RENDEZVOUS_TIMEOUT_S = _env_float("RENDEZVOUS_TIMEOUT_S", 120.0)
# Packages a job's runtime_env refers to by gcs:// URI (what `ray job submit --working-dir` uploads)
# are pinned in the GCS for this long, renewed every third of it while the job is not finished.
PACKAGE_PIN_S = _env_int("PACKAGE_PIN_S", 600)

# --- admission ----------------------------------------------------------------------------------
# A job that cannot be placed stops backfilling (smaller, lower-priority jobs may no longer jump
# ahead of it) once it has waited this long: bounded starvation.
STARVATION_THRESHOLD_S = _env_float("STARVATION_THRESHOLD_S", 300.0)
# Effective priority grows by one level per AGING_S of waiting (0 disables aging).
AGING_S = _env_float("AGING_S", 600.0)

# --- tenants: quotas and fair share (policy/tenants.py) -----------------------------------------
# Usage decays with this half-life; it is updated (and the queue's fair-share order with it) this often.
FAIRSHARE_HALF_LIFE_S = _env_float("FAIRSHARE_HALF_LIFE_S", 3600.0)
FAIRSHARE_INTERVAL_S = _env_float("FAIRSHARE_INTERVAL_S", 10.0)
# A job of a tenant with fair-share factor F (1: used nothing, 0.5: used exactly its share) is
# ordered as if queued F * FAIRSHARE_WINDOW_S earlier (0 disables fair share).
FAIRSHARE_WINDOW_S = _env_float("FAIRSHARE_WINDOW_S", 600.0)
# A CPU held counts this much of a GPU in fair-share usage.
FAIRSHARE_CPU_WEIGHT = _env_float("FAIRSHARE_CPU_WEIGHT", 0.1)
# Tenants' spend (for their budgets: max_usd_per_hour, budget_usd) is read from the cost ledger this often.
TENANT_SPEND_INTERVAL_S = _env_float("TENANT_SPEND_INTERVAL_S", 10.0)

# --- preemption (policy/preemption.py) ------------------------------------------------------------
# The blocked job may preempt lower-priority running jobs once it has waited this long (0 disables).
PREEMPT_AFTER_S = _env_float("PREEMPT_AFTER_S", 600.0)
# A job is preempted at most this many times per hour (then it is no longer a candidate).
PREEMPT_MAX_PER_HOUR = _env_int("PREEMPT_MAX_PER_HOUR", 2)
# A victim is stopped once it has a newer complete checkpoint, or after this long.
PREEMPT_CHECKPOINT_WAIT_S = _env_float("PREEMPT_CHECKPOINT_WAIT_S", 60.0)
# After its victims are stopped, a blocked job gets this long to be placed on their room before
# more victims are chosen for it (freed resources take a moment to show).
PREEMPT_GRACE_S = _env_float("PREEMPT_GRACE_S", 30.0)
# How often the Coordinator looks for victims for a blocked job (and checks victims' checkpoints).
PREEMPT_CHECK_INTERVAL_S = _env_float("PREEMPT_CHECK_INTERVAL_S", 2.0)

# --- node health (policy/health.py, control/health/) ----------------------------------------------
# Every node's HealthMonitor samples and heartbeats this often; a node silent for
# HEARTBEAT_TIMEOUT_FACTOR intervals is unhealthy.
HEALTH_INTERVAL_S = _env_float("HEALTH_INTERVAL_S", 5.0)
# The Coordinator judges every node this often, on Ray's node table at most HEALTH_NODES_TTL_S old
# (a node Ray marks dead, or one a rank of ours died with, is judged within about one pass).
HEALTH_PASS_INTERVAL_S = _env_float("HEALTH_PASS_INTERVAL_S", 1.0)
HEALTH_NODES_TTL_S = _env_float("HEALTH_NODES_TTL_S", 0.5)
HEALTH_HEARTBEAT_TIMEOUT_FACTOR = _env_float("HEALTH_HEARTBEAT_TIMEOUT_FACTOR", 1.5)
# ... plus twice how late its (its host's) last HEALTH_LAG_SAMPLES heartbeats came, at most
# HEALTH_HEARTBEAT_LAG_CAP_S more: a host so busy that heartbeats come late is slow, not stuck
HEALTH_LAG_SAMPLES = _env_int("HEALTH_LAG_SAMPLES", 6)
HEALTH_HEARTBEAT_LAG_CAP_S = _env_float("HEALTH_HEARTBEAT_LAG_CAP_S", 10.0)
HEALTH_FAILURE_THRESHOLD = _env_int("HEALTH_FAILURE_THRESHOLD", 3)
HEALTH_MEM_PCT_MAX = _env_float("HEALTH_MEM_PCT_MAX", 95.0)
HEALTH_LOAD_PER_CPU_MAX = _env_float("HEALTH_LOAD_PER_CPU_MAX", 4.0)
HEALTH_GPU_TEMP_C_MAX = _env_float("HEALTH_GPU_TEMP_C_MAX", 90.0)
HEALTH_DISK_LOW_PCT = _env_float("HEALTH_DISK_LOW_PCT", 5.0)
HEALTH_DISK_FULL_PCT = _env_float("HEALTH_DISK_FULL_PCT", 1.0)
HEALTH_CPU_WEIGHT = _env_float("HEALTH_CPU_WEIGHT", 1.0)
HEALTH_GPU_WEIGHT = _env_float("HEALTH_GPU_WEIGHT", 3.0)
# A gang on an unhealthy or drained node is asked to checkpoint now, then moved once it has (or
# after this long, from its newest checkpoint).
HEALTH_EVACUATE_WAIT_S = _env_float("HEALTH_EVACUATE_WAIT_S", 30.0)
# How often a gang being moved (preemption, health, drain; control/evacuation.py) is checked for
# a newer complete checkpoint.
EVACUATE_CHECK_INTERVAL_S = _env_float("EVACUATE_CHECK_INTERVAL_S", 1.0)
# An elastic gang (num_workers: {min, max}) grows at most once per this long: its attempt must
# have run this long before it is checkpointed and placed again larger (policy/elastic.py).
ELASTIC_GROW_INTERVAL_S = _env_float("ELASTIC_GROW_INTERVAL_S", 30.0)
# An elastic gang placed again is sized this long after its previous attempt ended: Ray's free view
# shows the room a removed placement group gave back some ms to a second later.
ELASTIC_SETTLE_S = _env_float("ELASTIC_SETTLE_S", 2.0)
# How long a gang asked to grow waits for its checkpoint before it is placed again larger anyway
# (from its newest checkpoint).
ELASTIC_GROW_WAIT_S = _env_float("ELASTIC_GROW_WAIT_S", 60.0)
# An unhealthy node is used again once it has been healthy this long (not one drained by hand).
HEALTH_RECOVER_S = _env_float("HEALTH_RECOVER_S", 60.0)

# --- metrics (control/observe/metrics.py) ----------------------------------------------------------------
METRICS_ENABLED = _env_bool("METRICS_ENABLED", True)
# the MetricsCollector's /metrics (0: a free port; a taken port falls back to a free one, logged)
METRICS_PORT = _env_int("METRICS_PORT", 9478)
METRICS_HOST = _env_str("METRICS_HOST", "127.0.0.1")

# --- notifications (control/observe/notify.py) -----------------------------------------------------
NOTIFY_TIMEOUT_S = _env_float("NOTIFY_TIMEOUT_S", 5.0)
NOTIFY_RETRY_BASE_S = _env_float("NOTIFY_RETRY_BASE_S", 1.0)
NOTIFY_RETRY_MAX_S = _env_float("NOTIFY_RETRY_MAX_S", 300.0)
NOTIFY_MAX_ATTEMPTS = _env_int("NOTIFY_MAX_ATTEMPTS", 10)
NOTIFY_POLL_S = _env_float("NOTIFY_POLL_S", 1.0)

# --- job spec limits ----------------------------------------------------------------------------
MAX_PRIORITY = 1000
MIN_PRIORITY = 0
MAX_GANG_SIZE = _env_int("MAX_GANG_SIZE", 1024)
MAX_USER_RETRIES = 10
MAX_SYSTEM_RESTARTS = 100
MAX_TRIALS = _env_int("MAX_TRIALS", 100_000)
# a sweep's bundle sends its finished trials' results to the Coordinator at most this often (and at its end)
TRIAL_FLUSH_INTERVAL_S = _env_float("TRIAL_FLUSH_INTERVAL_S", 0.2)
# a sweep starts one bundle, and its others once they pay off (``policy/sweeps.py``); off: all at once
SWEEP_STAGED_START = _env_bool("SWEEP_STAGED_START", True)
# a bundle's start (worker, runtime_env, imports) assumed before one is measured in the attempt
SWEEP_ASSUMED_START_S = _env_float("SWEEP_ASSUMED_START_S", 3.0)
# once trials are timed, a bundle asking for work takes at least this much of it at a time
SWEEP_MIN_SHARE_S = _env_float("SWEEP_MIN_SHARE_S", 0.05)

# --- local cluster ------------------------------------------------------------------------------
LOCAL_NODE_IP = _env_str("LOCAL_NODE_IP", "127.0.0.1")
LOCAL_OBJECT_STORE_BYTES = _env_int("LOCAL_OBJECT_STORE_BYTES", 150 * 1024 * 1024)
LOCAL_NODE_START_TIMEOUT_S = _env_float("LOCAL_NODE_START_TIMEOUT_S", 60.0)
# A node whose `ray start` fails (e.g. its GCS registration hits Ray's RPC deadline on a machine
# under heavy load) is started again this many times, with a log line, before giving up.
LOCAL_NODE_START_RETRIES = _env_int("LOCAL_NODE_START_RETRIES", 1)
LOCAL_NODE_STOP_GRACE_S = _env_float("LOCAL_NODE_STOP_GRACE_S", 3.0)
# Faster node-death detection for local clusters (Ray's defaults take ~15 s).
LOCAL_HEALTH_CHECK_PERIOD_MS = _env_int("LOCAL_HEALTH_CHECK_PERIOD_MS", 1000)
LOCAL_HEALTH_CHECK_FAILURE_THRESHOLD = _env_int("LOCAL_HEALTH_CHECK_FAILURE_THRESHOLD", 3)

# --- HTTP API token -----------------------------------------------------------------------------
API_TOKEN_ENV = "RAYCLUSTER_API_TOKEN"
API_TOKEN_FILE = "api_token"

# --- checkpoints and rank logs -------------------------------------------------------------------
CHECKPOINT_WRITE_QUEUE = _env_int("CHECKPOINT_WRITE_QUEUE", 2)
# Where checkpoints (<uri>/checkpoints) and rank logs (<uri>/logs) live, reachable from every node:
# a path / file:// URI (default: the state dir on the head's disk, fine for nodes on this machine)
# or an object store such as s3://bucket/prefix (credentials and endpoint from the standard
# AWS_* environment of the Ray processes). `raycluster up --storage` / ray-cluster.yaml storage_uri.
STORAGE_URI = _env_str("STORAGE_URI", "")
# A rank's log on an object store (no append) is uploaded whole this often while it runs, and at its end.
LOG_UPLOAD_INTERVAL_S = _env_float("LOG_UPLOAD_INTERVAL_S", 5.0)

# --- local cluster auth (raycluster/provision/) -------------------------------------------------
# Ray 2.60 token authentication for the embedded local cluster: "token" (default: a fresh random
# token per cluster, stored 0600 under the state dir) or "disabled".
LOCAL_AUTH_MODE = _env_str("LOCAL_AUTH_MODE", "token")
# How long stop()/kill_node() wait for SIGKILLed processes to disappear before giving up.
LOCAL_NODE_KILL_WAIT_S = _env_float("LOCAL_NODE_KILL_WAIT_S", 5.0)

# --- HTTP control API (raycluster/api/, a Ray Serve application) --------------------------------
API_PORT = _env_int("API_PORT", 8000)
# Jobs one batch submit (POST /jobs/batch, Client.submit_many) may carry.
SUBMIT_BATCH_MAX = _env_int("SUBMIT_BATCH_MAX", 1000)
# concurrent POST /jobs requests of one API replica sent to the Coordinator in one call, at most
API_SUBMIT_BATCH_MAX = _env_int("API_SUBMIT_BATCH_MAX", 100)
# how often the BudgetAutoscaler decides (elastic clusters)
BUDGET_INTERVAL_S = _env_float("BUDGET_INTERVAL_S", 2.0)
# a node given back while jobs run on it (shed when prices rose): its gangs are asked to checkpoint
# now, and it is released once each has (or after this many seconds)
SHED_CHECKPOINT_WAIT_S = _env_float("SHED_CHECKPOINT_WAIT_S", 30.0)
# ... then drained in Ray with this deadline (its gangs are moved, then it is released, well within it).
SHED_DRAIN_DEADLINE_S = _env_float("SHED_DRAIN_DEADLINE_S", 30.0)
# how often rank 0 of a running gang asks the Coordinator whether to checkpoint now (shed, preemption
# notice); a gang of several ranks agrees on it every CHECKPOINT_ASK_EVERY_STEPS steps
CHECKPOINT_ASK_INTERVAL_S = _env_float("CHECKPOINT_ASK_INTERVAL_S", 2.0)
CHECKPOINT_ASK_EVERY_STEPS = _env_int("CHECKPOINT_ASK_EVERY_STEPS", 10)
# bundles of running + queued gangs told to Ray's autoscaler as demand (elastic clusters), at most
DEMAND_MAX_BUNDLES = _env_int("DEMAND_MAX_BUNDLES", 1000)
# packages uploaded through the API (PUT /api/packages/gcs/{name}: a spec's local working_dir) up to this size
API_MAX_PACKAGE_BYTES = _env_int("API_MAX_PACKAGE_BYTES", 100 * 1024 * 1024)
# JSON request bodies nesting deeper than this are refused with 422 (naming where)
API_MAX_JSON_DEPTH = _env_int("API_MAX_JSON_DEPTH", 64)
# Request bodies larger than this are refused with 413 (checked on Content-Length and while streaming).
API_MAX_BODY_BYTES = _env_int("API_MAX_BODY_BYTES", 1024 * 1024)
# How long one API request waits for a runtime actor before answering 503 (submit waits at least
# ENTRYPOINT_CHECK_TIMEOUT_S + 10 s, since it imports the entrypoint on a worker).
API_ACTOR_TIMEOUT_S = _env_float("API_ACTOR_TIMEOUT_S", 30.0)
# The value of Retry-After on 503 answers (seconds).
API_RETRY_AFTER_S = _env_int("API_RETRY_AFTER_S", 2)
# /cluster/status and /nodes are computed at most this often per API replica; concurrent requests share one.
API_STATUS_CACHE_S = _env_float("API_STATUS_CACHE_S", 0.5)
API_NUM_REPLICAS = _env_int("API_NUM_REPLICAS", 1)
# Serve the API straight from its replica's own HTTP server on API_PORT (Ray Serve "direct ingress")
# instead of through Serve's proxy: one process and one hop per request instead of two — about 4x
# the requests per CPU second here (scripts/bench_api.py). Needs API_NUM_REPLICAS == 1 (one port);
# with more replicas, or with 0 here, requests go through Serve's proxy on API_PORT.
API_DIRECT_INGRESS = _env_bool("API_DIRECT_INGRESS", True)
# In direct-ingress mode Serve's proxy still runs (Serve serves HTTP only when it has a proxy), on
# loopback at this port; 0 = a free port chosen at deploy time. Nothing needs to reach it.
API_PROXY_PORT = _env_int("API_PROXY_PORT", 0)
# How long a stopping API replica keeps its port open for in-flight requests before closing
# (Serve's default of 30 s waits for a load balancer to deregister it; nothing sits in front here).
API_DRAIN_S = _env_float("API_DRAIN_S", 1.0)
# How often Serve checks the API replica (a crashed replica is replaced this soon; Serve's default is 10 s).
API_HEALTH_CHECK_PERIOD_S = _env_float("API_HEALTH_CHECK_PERIOD_S", 2.0)
API_HEALTH_CHECK_TIMEOUT_S = _env_float("API_HEALTH_CHECK_TIMEOUT_S", 10.0)
# deploy_api() waits this long for GET /healthz to answer on the advertised URL.
API_READY_TIMEOUT_S = _env_float("API_READY_TIMEOUT_S", 60.0)
# Concurrent requests one API replica takes (its handlers are async and only await actor calls).
API_MAX_ONGOING_REQUESTS = _env_int("API_MAX_ONGOING_REQUESTS", 256)
