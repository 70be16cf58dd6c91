-- NeuraBalancer schema, version 1.
--
-- Applied by the proxy at start (see proxy/src/store/migrate.rs) inside one transaction,
-- under an advisory lock, and recorded in schema_migrations. Never edit an applied
-- migration: add a new file instead (the proxy refuses a database whose recorded checksum
-- differs from the file it ships).

-- Every backend the proxy has served from, per pool. Upserted with each snapshot.
CREATE TABLE servers (
    pool        text        NOT NULL,
    id          text        NOT NULL,
    address     text        NOT NULL,
    weight      integer     NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool, id)
);

-- One row per proxied request: what the decision saw (f_* columns, the chosen backend's
-- features at the moment it was picked), what it chose and what came of it. The training
-- pipeline reads these through the training_requests view.
CREATE TABLE requests (
    time                 timestamptz NOT NULL,  -- when the request arrived
    request_id           text        NOT NULL,  -- X-Request-Id
    trace_id             text,                  -- W3C traceparent trace id, when the client sent one
    pool                 text,                  -- null: no route matched
    route                text,                  -- the matched route's path prefix (a bounded class)
    backend              text,                  -- server id; null: no backend was chosen
    backend_address      text,
    method               text        NOT NULL,  -- GET, POST, ... or OTHER
    status               smallint    NOT NULL,  -- 0: no response was sent
    error                text,                  -- proxy error kind, when the request failed
    latency_us           bigint      NOT NULL,  -- request arrival to the end of the response
    upstream_latency_us  bigint,                -- backend chosen to response header received
    request_bytes        bigint      NOT NULL,  -- request body bytes read
    response_bytes       bigint      NOT NULL,  -- response body bytes sent
    retries              smallint    NOT NULL,
    strategy             text,                  -- the strategy that chose the backend
    f_inflight           real,                  -- requests in flight to the backend before this one
    f_latency_ewma_ms    real,                  -- its peak-EWMA latency estimate, decayed to now
    f_error_rate         real,                  -- its recent error rate, 0..1
    f_weight             real,                  -- its configured weight
    f_since_success_ms   real,                  -- time since its last successful response
    f_reported_cpu       real,                  -- ORCA cpu_utilization it last reported
    f_reported_queue     real,                  -- ORCA named_metrics.queue it last reported
    f_reported_rps       real,                  -- ORCA rps_fractional it last reported
    predicted_latency_us bigint                 -- the model's prediction, when the ml strategy chose
);
-- Append-only in time order: a BRIN index is tiny and costs next to nothing per insert.
CREATE INDEX requests_time_brin ON requests USING brin (time);

-- Periodic per-backend state (storage.snapshot_interval_ms).
CREATE TABLE backend_snapshots (
    time            timestamptz NOT NULL,
    pool            text        NOT NULL,
    backend         text        NOT NULL,
    address         text        NOT NULL,
    health          text        NOT NULL,  -- pending, healthy, unhealthy
    ejected         boolean     NOT NULL,  -- passively ejected at that moment
    weight          integer     NOT NULL,
    inflight        integer     NOT NULL,
    latency_ewma_ms real,
    error_rate      real        NOT NULL,
    requests        bigint      NOT NULL,  -- responses seen since the proxy started
    reported_cpu    real,                  -- what the backend last reported (ORCA)
    reported_queue  real,
    reported_rps    real
);
CREATE INDEX backend_snapshots_time_brin ON backend_snapshots USING brin (time);
CREATE INDEX backend_snapshots_backend_time ON backend_snapshots (pool, backend, time DESC);

-- The model registry: every trained model, its held-out metrics and which one serves.
CREATE TABLE models (
    version       text        PRIMARY KEY,
    trained_at    timestamptz NOT NULL,
    training_rows bigint,
    holdout       jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- e.g. {"mae_ms": 1.2, "baseline_mae_ms": 3.4}
    artifact      text,                                      -- where the ONNX file is
    active        boolean     NOT NULL DEFAULT false,
    activated_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- At most one active model.
CREATE UNIQUE INDEX models_one_active ON models (active) WHERE active;

-- What the training pipeline and `neurabalancer export-training` read: requests that
-- reached a backend, with the same columns as the JSONL request log.
CREATE VIEW training_requests AS
SELECT time, request_id, trace_id, pool, route, backend, backend_address, method, status, error,
       latency_us, upstream_latency_us, request_bytes, response_bytes, retries, strategy,
       f_inflight, f_latency_ewma_ms, f_error_rate, f_weight, f_since_success_ms,
       f_reported_cpu, f_reported_queue, f_reported_rps, predicted_latency_us
FROM requests
WHERE backend IS NOT NULL;
